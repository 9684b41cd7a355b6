//! Pause and resume: the v1 freezer controller (`freezer.state`) and v2's built-in
//! `cgroup.freeze`. Both are asynchronous: the write asks the kernel to stop every task
//! at its next freezable point, and the state must be polled until it says so.

use std::path::Path;
use std::time::{Duration, Instant};

use super::CgroupError;
use super::fs;

/// Freezer state, as runc's `state` shows it (`paused` when frozen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

/// How long freeze/thaw wait for the kernel. Freezing waits for every task to reach a
/// freezable point; a task in uninterruptible sleep can hold it up for a while.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// v1: writes FROZEN/THAWED and waits until `freezer.state` reads it back. FREEZING
/// is the transient state in between; re-writing FROZEN nudges tasks that were forking
/// when the first request arrived. A freeze that does not complete is undone.
pub fn set_v1(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    let want = if frozen { "FROZEN" } else { "THAWED" };
    loop {
        fs::write(dir, "freezer.state", want)?;
        if fs::read(dir, "freezer.state")? == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            if frozen {
                let _ = fs::write(dir, "freezer.state", "THAWED");
            }
            return Err(CgroupError::Timeout {
                path: dir.join("freezer.state"),
                want,
                secs: FREEZE_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// v2: writes 1/0 to `cgroup.freeze` and waits for `frozen 1`/`frozen 0` in
/// `cgroup.events`.
pub fn set_v2(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    fs::write(dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    loop {
        let events = fs::read(dir, "cgroup.events")?;
        if events.lines().any(|l| l.trim() == want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            if frozen {
                let _ = fs::write(dir, "cgroup.freeze", "0");
            }
            return Err(CgroupError::Timeout {
                path: dir.join("cgroup.events"),
                want: if frozen { "frozen" } else { "thawed" },
                secs: FREEZE_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// v1 state, as the kernel reports it.
pub fn state_v1(dir: &Path) -> Result<FreezerState, CgroupError> {
    Ok(match fs::read(dir, "freezer.state")?.as_str() {
        "FROZEN" => FreezerState::Frozen,
        "FREEZING" => FreezerState::Freezing,
        _ => FreezerState::Thawed,
    })
}

/// v2 state: requested (`cgroup.freeze`) but not yet reached (`cgroup.events`) is
/// Freezing.
pub fn state_v2(dir: &Path) -> Result<FreezerState, CgroupError> {
    let requested = fs::read_opt(dir, "cgroup.freeze")?.is_some_and(|v| v == "1");
    let frozen = fs::read(dir, "cgroup.events")?
        .lines()
        .any(|l| l.trim() == "frozen 1");
    Ok(match (requested, frozen) {
        (_, true) => FreezerState::Frozen,
        (true, false) => FreezerState::Freezing,
        (false, false) => FreezerState::Thawed,
    })
}
