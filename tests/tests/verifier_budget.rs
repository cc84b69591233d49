//! Every eBPF program verifies on this kernel with a wide margin: at most a
//! fifth of the verifier's 1,000,000 processed-instruction limit each, and
//! all of them together in under 3 s. A change that creeps toward the limit
//! fails here, with the table, rather than on a user's node after a kernel
//! update (the same build of a program took 8% more on a rebuilt kernel of
//! the same version, and crossed the limit).

use burnwatch_e2e::{agent, require_root};

#[test]
fn every_program_verifies_within_budget() {
    require_root();
    let out = std::process::Command::new(agent::binary())
        .arg("verifier")
        .output()
        .expect("running burnwatch verifier");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The table, whatever the verdict: it is the measurement.
    println!("{stdout}");
    assert!(
        out.status.success(),
        "a program is over the verifier budget or was rejected:\n{stdout}\n{stderr}"
    );
    // Every program of the object is in the table, each measured (a table
    // of zeros would pass the budget without having verified anything).
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| program"))
        .collect();
    for program in ["sys_exit_read", "frame_responses", "parse_client_write"] {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| {program} ")))
            .unwrap_or_else(|| panic!("{program} missing from the table:\n{stdout}"));
        let processed: u64 = row.split('|').nth(2).unwrap().trim().parse().unwrap();
        assert!(processed > 1000, "{program} processed only {processed}");
    }
    assert!(rows.len() >= 12, "expected every program:\n{stdout}");
}
