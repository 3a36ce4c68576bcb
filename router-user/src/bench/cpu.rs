//! CPU time of processes and threads, from `/proc` (user + system), for benchmarks that charge
//! each component its own CPU.
use std::io;
use std::time::Duration;

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// `(comm, utime + stime in ticks)` of one `stat` file's text.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    // `pid (comm) state ...`: the name may hold spaces and parentheses, the fields after the
    // last `)` do not.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let mut fields = stat.get(close + 1..)?.split_whitespace();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the comm.
    let user = fields.nth(11)?.parse::<u64>().ok()?;
    let system = fields.next()?.parse::<u64>().ok()?;
    Some((name, user + system))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

/// User + system CPU of a running process (all its threads), from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, ticks) = parse_stat(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/<pid>/stat"))?;
    Ok(ticks_to_duration(ticks))
}

/// CPU of this process's threads, split into those whose name starts with `prefix` and the
/// rest (`/proc/self/task/*/stat`). Threads that ended are not counted.
pub fn threads_cpu(prefix: &str) -> io::Result<(Duration, Duration)> {
    let (mut matching, mut other) = (0u64, 0u64);
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Ok(entry) = entry else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, ticks)) = parse_stat(&stat) else {
            continue;
        };
        if name.starts_with(prefix) {
            matching += ticks;
        } else {
            other += ticks;
        }
    }
    Ok((ticks_to_duration(matching), ticks_to_duration(other)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let line = "42 (sy (live) hop) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0";
        assert_eq!(parse_stat(line), Some(("sy (live) hop", 150)));
        assert_eq!(parse_stat("42 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_and_threads_are_readable() {
        let pid = std::process::id();
        assert!(process_cpu(pid).is_ok());
        let (matching, _) = threads_cpu("no-thread-has-this-name").unwrap();
        assert_eq!(matching, Duration::ZERO);
    }
}
