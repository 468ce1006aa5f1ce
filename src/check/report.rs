//! The check's output: a title, one aligned line per step with its latency, the findings,
//! and a verdict. Written as it happens, so a slow step shows where the check waits.

use std::fmt::Display;
use std::io::Write;
use std::time::Duration;

use super::diagnosis::{Diagnosis, Severity};
use super::url::TurnUrl;
use super::Outcome;

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Done, but with a caveat the detail explains.
    Warn,
    Fail,
}

pub struct Report<W: Write> {
    out: W,
}

impl<W: Write> Report<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    pub fn title(&mut self, url: &TurnUrl) {
        self.line(format_args!("rendez check {url}"));
    }

    /// `name  status  latency  detail`.
    pub fn step(
        &mut self,
        name: &str,
        status: Status,
        latency: Option<Duration>,
        detail: impl Display,
    ) {
        let status = match status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        let latency = latency.map_or_else(String::new, |elapsed| {
            format!("{:.1} ms", elapsed.as_secs_f64() * 1000.0)
        });
        self.line(format_args!(
            "  {name:<11} {status:<4} {latency:>10}  {detail}"
        ));
    }

    pub fn finding(&mut self, diagnosis: &Diagnosis) {
        let label = match diagnosis.severity() {
            Severity::Failure => "diagnosis",
            Severity::Warning => "warning",
        };
        self.line(format_args!("{label}: {diagnosis}"));
    }

    pub fn verdict(&mut self, outcome: &Outcome) {
        let verdict = match (outcome.passed(), outcome.echoed) {
            (true, _) => "PASS: the relayed echo came back through the server",
            (false, true) => "FAIL: the relayed echo came back, but clients will fail (see above)",
            (false, false) => "FAIL: no relayed echo",
        };
        self.line(format_args!("{verdict}"));
    }

    fn line(&mut self, text: std::fmt::Arguments<'_>) {
        // The report is best effort: a closed stdout must not turn a finished check into
        // a crash, and the exit status still tells the result.
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_line_up() {
        let mut out = Vec::new();
        let mut report = Report::new(&mut out);
        report.step(
            "binding",
            Status::Ok,
            Some(Duration::from_micros(412)),
            "mapped 192.0.2.1:4000",
        );
        report.step("allocate", Status::Fail, None, "401 Unauthorized");
        let text = String::from_utf8(out).unwrap();
        let expected = [
            "  binding     ok       0.4 ms  mapped 192.0.2.1:4000",
            "  allocate    FAIL             401 Unauthorized",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
    }
}
