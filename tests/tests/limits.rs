//! The daemon raises its open-file soft limit to the hard limit at start.
//! (Its own test binary: it lowers this process's soft limit, which the
//! daemon inherits.)

use switchboard_tests::*;

fn limits_of(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[tokio::test]
async fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
    let me = std::process::id();
    let (_, hard) = limits_of(me);
    let low = 256.min(hard);
    let ok = std::process::Command::new("prlimit")
        .arg(format!("--pid={me}"))
        .arg(format!("--nofile={low}:{hard}"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "prlimit (util-linux) lowers this test's soft limit");
    assert_eq!(limits_of(me).0, low);
    let d = Daemon::builder().start().unwrap();
    let (soft, daemon_hard) = limits_of(d.pid());
    assert_eq!((soft, daemon_hard), (hard, hard));
    let line = d
        .wait_log("open files", std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        line.contains(&format!("soft limit {hard} (was {low}, hard limit {hard})")),
        "{line}"
    );
}
