//! What the generator reads besides its own packets: CPU time and memory of the server
//! (/proc) and of other watched tasks, this process's CPU time, the machine's (busy and
//! stolen), kernel socket drops; and the latency histogram and loss bitmap.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::Context;

/// The tasks whose CPU time a snapshot reads besides this process.
#[derive(Clone, Default)]
pub(crate) struct Watched {
    pub(crate) server_pid: Option<u32>,
    /// Counted as the server's side too (e.g. its interface's NAPI kernel threads).
    pub(crate) server_side: Vec<u32>,
    /// Counted with the generator (e.g. its own interface's NAPI kernel threads).
    pub(crate) client_side: Vec<u32>,
}

/// Server CPU, generator CPU and a counter at one instant.
#[derive(Clone, Copy)]
pub(crate) struct Snapshot {
    pub(crate) at: Instant,
    pub(crate) server_cpu: Option<f64>,
    /// Sum over `Watched::server_side` (None when one could not be read).
    pub(crate) server_side_cpu: Option<f64>,
    /// Sum over `Watched::client_side`.
    pub(crate) client_side_cpu: Option<f64>,
    pub(crate) generator_cpu: f64,
    /// Busy CPU time of the whole machine: what neither the server nor this generator
    /// used was taken by something else (a build, another benchmark) and makes the run
    /// noisy.
    pub(crate) machine_cpu: Option<f64>,
    /// Time the hypervisor ran something else while this machine's CPUs wanted to run.
    pub(crate) steal: Option<f64>,
    pub(crate) count: u64,
}

impl Snapshot {
    pub(crate) fn take(watched: &Watched, count: u64) -> Self {
        let (machine_cpu, steal) = read_machine_seconds().unzip();
        Self {
            at: Instant::now(),
            server_cpu: watched
                .server_pid
                .and_then(|pid| read_cpu_seconds(pid).ok()),
            server_side_cpu: sum_cpu_seconds(&watched.server_side),
            client_side_cpu: sum_cpu_seconds(&watched.client_side),
            generator_cpu: own_cpu_seconds(),
            machine_cpu,
            steal,
            count,
        }
    }
}

/// CPU seconds of all these tasks together; None if one of them is gone.
fn sum_cpu_seconds(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&pid| read_cpu_seconds(pid).ok()).sum()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks.max(1) as f64
}

/// Busy (user + nice + system + irq + softirq) and stolen seconds of all CPUs, from the
/// first line of /proc/stat.
fn read_machine_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (busy, steal) = parse_machine_ticks(&stat)?;
    let tick = clock_ticks_per_second();
    Some((busy as f64 / tick, steal as f64 / tick))
}

/// (busy, steal) ticks.
fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...: skip idle and iowait.
    let [user, nice, system, _idle, _iowait, irq, softirq, ref rest @ ..] = fields[..] else {
        return None;
    };
    let steal = rest.first().copied().unwrap_or(0);
    Some((user + nice + system + irq + softirq, steal))
}

/// Datagrams the kernel dropped because a socket's receive buffer was full, summed over
/// the server's and this generator's UDP sockets: tells where lost packets were lost.
#[derive(Clone, Copy, Default)]
pub(crate) struct SocketDrops {
    pub(crate) server: Option<u64>,
    pub(crate) generator: Option<u64>,
}

impl SocketDrops {
    pub(crate) fn take(server_pid: Option<u32>) -> Self {
        // Each process's own view of /proc/net/udp: the server may run in another network
        // namespace than this generator.
        let drops_of = |pid: &str| {
            let table = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).ok()?;
            udp_drops(&table, &socket_inodes(pid)?)
        };
        Self {
            server: server_pid.and_then(|pid| drops_of(&pid.to_string())),
            generator: drops_of("self"),
        }
    }

    pub(crate) fn minus(&self, earlier: &SocketDrops) -> SocketDrops {
        let delta = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        SocketDrops {
            server: delta(self.server, earlier.server),
            generator: delta(self.generator, earlier.generator),
        }
    }
}

/// Inodes of the sockets a process holds (links "socket:[INODE]" in /proc/PID/fd).
fn socket_inodes(pid: &str) -> Option<HashSet<u64>> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let inodes = entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    Some(inodes)
}

/// Sum of the `drops` column of /proc/net/udp over the sockets with these inodes.
fn udp_drops(table: &str, inodes: &HashSet<u64>) -> Option<u64> {
    let mut total = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        let (Some(inode), Some(drops)) = (fields.get(9), fields.get(12)) else {
            continue;
        };
        if inode
            .parse()
            .is_ok_and(|inode: u64| inodes.contains(&inode))
        {
            total += drops.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// utime + stime of a process (all its threads), in seconds.
pub(crate) fn read_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let ticks = parse_cpu_ticks(&stat).context("parse /proc/PID/stat")?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// utime + stime (fields 14 and 15). The command name (field 2) may hold spaces and
/// parentheses, so count fields from the last ')'.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11); // field 3 is the first here
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of a process in KiB.
pub(crate) fn read_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    parse_rss_kib(&status).context("no VmRSS in /proc/PID/status")
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's user + system CPU time, all threads (the echo peers included).
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// A log-linear histogram of nanosecond values: exact below 32, then 32 buckets per
/// power of two (≤ 3 % error), in a fixed array — recording costs a few instructions.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const SUB_BUCKET_BITS: u32 = 5;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; 64 * SUB_BUCKETS as usize],
            total: 0,
        }
    }
}

impl Histogram {
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[Self::bucket(value)] += 1;
        self.total += 1;
    }

    fn bucket(value: u64) -> usize {
        if value < SUB_BUCKETS {
            return value as usize;
        }
        let shift = 63 - value.leading_zeros() - SUB_BUCKET_BITS;
        ((u64::from(shift) + 1) * SUB_BUCKETS + ((value >> shift) - SUB_BUCKETS)) as usize
    }

    /// The middle of bucket `index`.
    fn value_of(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB_BUCKETS {
            return index;
        }
        let shift = index / SUB_BUCKETS - 1;
        let low = (SUB_BUCKETS + index % SUB_BUCKETS) << shift;
        low + (1 << shift) / 2
    }

    /// The value at quantile `q` (0..=1); None when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let target = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                return Some(Self::value_of(index));
            }
        }
        None
    }

    pub(crate) fn subtract(&mut self, earlier: &Histogram) {
        for (count, before) in self.counts.iter_mut().zip(&earlier.counts) {
            *count -= before;
        }
        self.total -= earlier.total;
    }
}

/// One bit per sequence number: tells first arrivals from duplicates.
pub(crate) struct Bitmap {
    words: Vec<u64>,
}

impl Bitmap {
    pub(crate) fn new(bits: u64) -> Self {
        Self {
            words: vec![0; bits.div_ceil(64) as usize],
        }
    }

    /// Sets bit `index`; true if it was not set before (out of range: false).
    pub(crate) fn insert(&mut self, index: u64) -> bool {
        let Some(word) = self.words.get_mut((index / 64) as usize) else {
            return false;
        };
        let mask = 1 << (index % 64);
        let fresh = *word & mask == 0;
        *word |= mask;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_few_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.03, "{p50}");
        assert!((p99 / 99_000_000.0 - 1.0).abs() < 0.03, "{p99}");
        assert_eq!(Histogram::default().quantile(0.5), None);
        for v in [0, 1, 31, 32, 33, 64, 1 << 40, u64::MAX] {
            let index = Histogram::bucket(v);
            assert!(index < h.counts.len());
            assert_eq!(Histogram::bucket(Histogram::value_of(index)), index, "{v}");
        }
    }

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        let status = "Name:\tturnserver\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_kib(status), Some(12345));
    }

    #[test]
    fn machine_cpu_skips_idle_and_iowait_and_reads_steal() {
        let stat = "cpu  100 2 30 5000 7 1 4 0 0 0\ncpu0 50 1 15 2500 3 0 2 0 0 0\n";
        assert_eq!(parse_machine_ticks(stat), Some((137, 0)));
        let with_steal = "cpu  100 2 30 5000 7 1 4 55 0 0\n";
        assert_eq!(parse_machine_ticks(with_steal), Some((137, 55)));
        assert_eq!(parse_machine_ticks("intr 1 2 3"), None);
    }

    #[test]
    fn udp_drops_sum_the_given_sockets_only() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            1: 0100007F:87DC 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 111 2 0000000000000000 5\n\
            2: 0100007F:87DD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 222 2 0000000000000000 7\n\
            3: 0100007F:87DE 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 333 2 0000000000000000 11\n";
        let inodes = [111, 333].into_iter().collect();
        assert_eq!(udp_drops(table, &inodes), Some(16));
        // This process's own sockets are found through /proc/self/fd.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(socket_inodes("self").is_some_and(|inodes| !inodes.is_empty()));
        drop(socket);
    }

    #[test]
    fn bitmap_tells_duplicates_and_ignores_out_of_range() {
        let mut seen = Bitmap::new(100);
        assert!(seen.insert(99));
        assert!(!seen.insert(99));
        assert!(!seen.insert(1000));
    }
}
