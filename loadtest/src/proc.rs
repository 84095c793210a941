//! What a server process costs, read from /proc.

use anyhow::{Context, bail};

/// Resident memory of `pid` in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

/// Files `pid` holds open (sockets included): the entries of /proc/PID/fd.
pub fn open_fds(pid: u32) -> anyhow::Result<u64> {
    let entries =
        std::fs::read_dir(format!("/proc/{pid}/fd")).with_context(|| format!("open files of process {pid}"))?;
    Ok(entries.count() as u64)
}

/// Clock ticks per second of `utime`/`stime` in /proc (`USER_HZ`), 100 on Linux.
const USER_HZ: f64 = 100.0;

/// CPU time `pid` has used so far, user plus system, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
    // The command name (field 2) may hold spaces and parentheses: fields are
    // counted from the last ')'. After it come field 3 (state) onwards, so
    // utime (field 14) and stime (field 15) are at positions 11 and 12.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("malformed /proc stat");
    Ok((ticks(11)? + ticks(12)?) as f64 / USER_HZ)
}

/// The soft limit on open files of this process, when /proc tells it.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// Fails when this process may not hold `connections` sockets open, with
/// room to spare for its other files.
pub fn ensure_open_files(connections: usize) -> anyhow::Result<()> {
    if let Some(limit) = open_files_limit() {
        let needed = connections as u64 + 64;
        if needed > limit {
            bail!(
                "{connections} connections need about {needed} open files, the limit is {limit}: raise it with ulimit -n"
            );
        }
    }
    Ok(())
}

/// Logical CPUs and the CPU model, for the report.
pub fn machine() -> (usize, String) {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    (nproc, model)
}

/// The 1, 5 and 15 minute load averages, to tell a busy machine from an idle one.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap_or(0) > 0);
        assert!(cpu_seconds(pid).is_ok());
        assert!(open_fds(u32::MAX).is_err());
        assert!(open_files_limit().unwrap_or(1) > 0);
        assert!(ensure_open_files(1).is_ok());
        assert!(ensure_open_files(usize::MAX / 2).is_err() || open_files_limit().is_none());
        assert!(machine().0 > 0);
        assert!(load_average().is_some());
    }

    #[test]
    fn counts_open_files() {
        // Other tests of this binary open and close files meanwhile: 100
        // more files must show as about 100 more.
        let pid = std::process::id();
        let before = open_fds(pid).expect("own open files");
        let files: Vec<std::fs::File> =
            (0..100).map(|_| std::fs::File::open("/proc/self/status").expect("own status")).collect();
        let during = open_fds(pid).expect("own open files");
        assert!((before + 90..=before + 110).contains(&during), "{before} open, then {during} with 100 more");
        drop(files);
    }
}
