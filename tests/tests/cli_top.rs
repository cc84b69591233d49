//! `burnwatch top`, the real binary in a real terminal (tmux): it shows the live
//! agent's series sorted by burn, refreshes every second and quits on `q`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use burnwatch_e2e::{agent::Agent, client::Conn, nginx::Nginx, require_root, wait_for};

/// A tmux server of our own (`-L`), so nothing else on the machine is touched;
/// killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        let socket = format!("burnwatch-top-test-{}", std::process::id());
        Tmux { socket }
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is missing: install it (`cargo xtask setup` installs the Debian package tmux)")
    }
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "top"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_the_burning_tenant_first_refreshes_and_quits_on_q() {
    require_root();
    let nginx = Nginx::start();
    let agent = Agent::start(&format!(
        "services:\n  - name: shop\n    match:\n      port: {}\n\
slos:\n  - name: shop-availability\n    service: shop\n    objective: 99.9\n    window: 30d\n",
        nginx.port
    ));
    let mut c = Conn::open(nginx.port);
    for _ in 0..20 {
        assert_eq!(c.request("GET", "/ok", Some("globex")).status, 200);
        assert_eq!(c.request("GET", "/error", Some("acme")).status, 500);
    }
    nginx.wait_for_log_lines(40);

    let tmux = Tmux::new();
    let cmd = format!(
        "{} top --agent http://127.0.0.1:{}",
        burnwatch_e2e::agent::binary().display(),
        agent.metrics_port
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "180",
        "-y",
        "20",
        &cmd,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let screen = wait_for(Duration::from_secs(15), || {
        let s = tmux.screen();
        (s.contains("acme") && s.contains("globex")).then_some(s)
    })
    .unwrap_or_else(|| panic!("top never showed both tenants:\n{}", tmux.screen()));
    assert!(screen.contains("burnwatch top · node"), "{screen}");
    assert!(
        screen.contains("BURN5m") && screen.contains("EXHAUSTED IN"),
        "{screen}"
    );
    let row = |t: &str| {
        screen
            .lines()
            .position(|l| l.contains(t))
            .unwrap_or_else(|| panic!("{t} missing:\n{screen}"))
    };
    assert!(row("acme") < row("globex"), "sorted by burn:\n{screen}");
    let acme = screen.lines().nth(row("acme")).unwrap_or_default();
    assert!(
        acme.contains("page 14.4x 1h/5m") && acme.contains("1000"),
        "{acme}"
    );
    assert!(screen.contains("1 paging"), "{screen}");

    // Live: a new tenant shows up without any key press.
    for _ in 0..5 {
        assert_eq!(c.request("GET", "/ok", Some("initech")).status, 200);
    }
    let started = Instant::now();
    let refreshed = wait_for(Duration::from_secs(6), || {
        tmux.screen().contains("initech").then_some(())
    });
    assert!(refreshed.is_some(), "no refresh:\n{}", tmux.screen());
    println!("new tenant on screen after {:?}", started.elapsed());

    let out = tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(out.status.success());
    let quit = wait_for(Duration::from_secs(3), || (!tmux.alive()).then_some(()));
    assert!(quit.is_some(), "top did not quit on q:\n{}", tmux.screen());
}
