//! Reading /proc: which process listens on a TCP port.

use std::fs;

/// The `comm` of a process that listens on TCP `port` (IPv4 or IPv6).
pub fn listener_comm(port: u16) -> Option<String> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                && inodes.iter().any(|i| i == inode)
            {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                return Some(comm.trim().to_string());
            }
        }
    }
    None
}

/// Socket inodes listening on `port`, from /proc/net/tcp and tcp6.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (index 9)
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((_, p)) = f[1].rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() == Some(port) {
                out.push(f[9].to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let comm = listener_comm(port).expect("own listener found");
        let own = fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(comm, own.trim());
        drop(l);
        assert_eq!(listener_comm(port), None);
    }
}
