//! Saturation search: chat runs ("steps") at rising rates, to find the
//! highest rate the nodes carry well instead of reading it off a few fixed
//! rates. A step passes when it delivers at least 99.9% of the messages
//! offered, loses none and keeps p99 under 100 ms. The search stops at the
//! first step that fails (an overloaded step leaves a backlog that would
//! weigh on the next), at the maximum rate, or after the maximum number of
//! steps, so its length is bounded by the scenario.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::chat::{self, ChatReport, Load};
use crate::targets::Targets;

/// What a step must do to pass.
#[derive(Serialize)]
struct Criteria {
    min_delivered_share: f64,
    max_lost: u64,
    max_p99_ms: f64,
}

const CRITERIA: Criteria = Criteria { min_delivered_share: 0.999, max_lost: 0, max_p99_ms: 100.0 };
const MAX_STEPS: usize = 20;
/// Pause between steps, for the nodes to close the previous step's connections.
const SETTLE: Duration = Duration::from_secs(1);

/// How the search climbs; the first step runs at the load's rate.
#[derive(Clone, Debug, clap::Args, Deserialize, Serialize)]
#[command(next_help_heading = "Search")]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// The rate after a passing step: "x1.5" multiplies it by 1.5, "+2000" adds 2000 messages/s.
    #[arg(long)]
    #[serde(deserialize_with = "crate::scenario::from_str")]
    pub step: Growth,
    /// The highest rate to try; the last step runs at it exactly.
    #[arg(long)]
    pub max_rate: f64,
    /// The most steps to run; at most 20.
    #[arg(long, default_value_t = 10)]
    pub max_steps: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Growth {
    Factor(f64),
    Increment(f64),
}

/// What the search does after a step.
#[derive(Debug, PartialEq)]
pub enum Next {
    Step(f64),
    Stop(Stop),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    StepFailed,
    MaxRateReached,
    MaxStepsRun,
}

/// The figures of a step that decide it and make its row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct StepFigures {
    offered_rate: f64,
    offered: u64,
    delivered: u64,
    delivered_rate: f64,
    lost: u64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_message: f64,
}

#[derive(Serialize)]
struct Step {
    passed: bool,
    /// Why it failed; empty when it passed.
    shortfalls: Vec<String>,
    figures: StepFigures,
    report: ChatReport,
}

/// The result of a search: every step, and the highest rate that passed.
#[derive(Serialize)]
pub struct SaturationReport {
    scenario: &'static str,
    label: Option<String>,
    criteria: Criteria,
    start_rate: f64,
    search: Search,
    /// The rate of the highest passing step; none when the first step failed.
    max_passing_rate: Option<f64>,
    stopped: Stop,
    steps: Vec<Step>,
}

impl FromStr for Growth {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |n: &str| n.trim().parse::<f64>().map_err(|_| format!("step {text:?}: {n:?} is not a number"));
        if let Some(factor) = text.trim().strip_prefix('x') {
            let factor = number(factor)?;
            if factor > 1.0 && factor.is_finite() {
                Ok(Self::Factor(factor))
            } else {
                Err("a step factor must be above 1".into())
            }
        } else if let Some(increment) = text.trim().strip_prefix('+') {
            let increment = number(increment)?;
            if increment > 0.0 && increment.is_finite() {
                Ok(Self::Increment(increment))
            } else {
                Err("a step increment must be above 0".into())
            }
        } else {
            Err(format!(
                "step {text:?}: write \"x1.5\" to multiply the rate by 1.5, or \"+2000\" to add 2000 messages/s"
            ))
        }
    }
}

impl fmt::Display for Growth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Factor(factor) => write!(f, "x{factor}"),
            Self::Increment(increment) => write!(f, "+{increment}"),
        }
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StepFailed => "a step failed",
            Self::MaxRateReached => "max_rate reached",
            Self::MaxStepsRun => "max_steps run",
        })
    }
}

impl Serialize for Growth {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Search {
    /// The checks that do not depend on the targets; `start_rate` is the first step's.
    pub fn validate(&self, start_rate: f64) -> anyhow::Result<()> {
        if self.max_rate.is_nan() || self.max_rate < start_rate || self.max_rate > chat::MAX_RATE {
            bail!("max_rate must be at least the first step's rate ({start_rate}) and at most {}", chat::MAX_RATE);
        }
        if self.max_steps == 0 || self.max_steps > MAX_STEPS {
            bail!("max_steps must be 1 to {MAX_STEPS}");
        }
        Ok(())
    }

    /// What follows the `steps_run`-th step, which ran at `rate`.
    pub fn next(&self, rate: f64, passed: bool, steps_run: usize) -> Next {
        if !passed {
            Next::Stop(Stop::StepFailed)
        } else if rate >= self.max_rate {
            Next::Stop(Stop::MaxRateReached)
        } else if steps_run >= self.max_steps {
            Next::Stop(Stop::MaxStepsRun)
        } else {
            let grown = match self.step {
                Growth::Factor(factor) => rate * factor,
                Growth::Increment(increment) => rate + increment,
            };
            Next::Step(grown.min(self.max_rate))
        }
    }
}

impl From<&ChatReport> for StepFigures {
    fn from(report: &ChatReport) -> Self {
        Self {
            offered_rate: report.offered_rate,
            offered: report.offered,
            delivered: report.delivered,
            delivered_rate: report.delivered_rate,
            lost: report.lost,
            p50_ms: report.latency_ms.p50,
            p99_ms: report.latency_ms.p99,
            cpu_us_per_message: report.cpu_us_per_message,
        }
    }
}

/// Why a step with these figures fails the criteria; empty when it passes.
pub fn shortfalls(figures: &StepFigures) -> Vec<String> {
    let mut found = Vec::new();
    let share = if figures.offered == 0 { 0.0 } else { figures.delivered as f64 / figures.offered as f64 };
    if share < CRITERIA.min_delivered_share {
        found.push(format!("delivered {:.2}% of offered", share * 100.0));
    }
    if figures.lost > CRITERIA.max_lost {
        found.push(format!("lost {}", figures.lost));
    }
    if figures.p99_ms.is_nan() || figures.p99_ms >= CRITERIA.max_p99_ms {
        found.push(format!("p99 {:.1} ms", figures.p99_ms));
    }
    found
}

/// Runs steps from `load.rate` up as `search` says, each a chat run of `load` at its rate.
pub async fn run(
    targets: &Targets,
    load: &Load,
    search: &Search,
    label: Option<&str>,
) -> anyhow::Result<SaturationReport> {
    load.validate()?;
    search.validate(load.rate)?;
    // Every step must be one the targets allow before the first runs.
    chat::validate(targets, &load.at_rate(search.max_rate))?;
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = load.rate;
    let stopped = loop {
        println!("saturate: step {} at {rate}/s", steps.len() + 1);
        let report =
            chat::run(targets, &load.at_rate(rate), label).await.with_context(|| format!("step at {rate}/s"))?;
        report.print();
        let figures = StepFigures::from(&report);
        let shortfalls = shortfalls(&figures);
        let passed = shortfalls.is_empty();
        println!("  step       {}", verdict(passed, &shortfalls));
        steps.push(Step { passed, shortfalls, figures, report });
        match search.next(rate, passed, steps.len()) {
            Next::Step(next) => rate = next,
            Next::Stop(stop) => break stop,
        }
        tokio::time::sleep(SETTLE).await;
    };
    let max_passing_rate = steps.iter().filter(|s| s.passed).map(|s| s.figures.offered_rate).reduce(f64::max);
    Ok(SaturationReport {
        scenario: "saturate",
        label: label.map(str::to_owned),
        criteria: CRITERIA,
        start_rate: load.rate,
        search: search.clone(),
        max_passing_rate,
        stopped,
        steps,
    })
}

fn verdict(passed: bool, shortfalls: &[String]) -> String {
    if passed { "pass".to_owned() } else { format!("fail: {}", shortfalls.join(", ")) }
}

impl SaturationReport {
    /// The result and one row per step.
    pub fn print(&self) {
        let result =
            self.max_passing_rate.map_or_else(|| "none (the first step failed)".to_owned(), |r| format!("{r}/s"));
        println!(
            "saturate{}: highest passing rate {result}, stopped: {}; a step passes with delivered >= {}% of \
             offered, lost <= {}, p99 < {} ms",
            self.label.as_deref().map_or_else(String::new, |l| format!(" {l}")),
            self.stopped,
            CRITERIA.min_delivered_share * 100.0,
            CRITERIA.max_lost,
            CRITERIA.max_p99_ms
        );
        println!("| offered/s | delivered/s | lost | p50 ms | p99 ms | server CPU us/msg | result |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for step in &self.steps {
            let f = &step.figures;
            println!(
                "| {} | {:.0} | {} | {:.2} | {:.1} | {:.0} | {} |",
                f.offered_rate,
                f.delivered_rate,
                f.lost,
                f.p50_ms,
                f.p99_ms,
                f.cpu_us_per_message,
                verdict(step.passed, &step.shortfalls)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(step: &str, max_rate: f64, max_steps: usize) -> Search {
        Search { step: step.parse().expect("valid step"), max_rate, max_steps }
    }

    fn figures(offered: u64, delivered: u64, lost: u64, p99_ms: f64) -> StepFigures {
        StepFigures {
            offered_rate: offered as f64,
            offered,
            delivered,
            delivered_rate: delivered as f64,
            lost,
            p50_ms: 1.0,
            p99_ms,
            cpu_us_per_message: 100.0,
        }
    }

    #[test]
    fn a_clean_step_passes() {
        assert!(shortfalls(&figures(10_000, 10_000, 0, 20.0)).is_empty());
        // 99.9% exactly is enough.
        assert!(shortfalls(&figures(10_000, 9_990, 0, 99.9)).is_empty());
    }

    #[test]
    fn each_criterion_fails_a_step() {
        assert_eq!(shortfalls(&figures(10_000, 9_989, 0, 20.0)), ["delivered 99.89% of offered"]);
        assert_eq!(shortfalls(&figures(10_000, 10_000, 1, 20.0)), ["lost 1"]);
        assert_eq!(shortfalls(&figures(10_000, 10_000, 0, 100.0)), ["p99 100.0 ms"]);
        assert_eq!(shortfalls(&figures(10_000, 10_000, 0, f64::NAN)).len(), 1);
        assert_eq!(shortfalls(&figures(0, 0, 0, 0.0)), ["delivered 0.00% of offered"]);
        assert_eq!(shortfalls(&figures(10_000, 5_000, 7, 900.0)).len(), 3);
    }

    #[test]
    fn rates_grow_by_factor_or_increment_up_to_the_maximum() {
        let by_half = search("x1.5", 20_000.0, 10);
        assert_eq!(by_half.next(5_000.0, true, 1), Next::Step(7_500.0));
        assert_eq!(by_half.next(7_500.0, true, 2), Next::Step(11_250.0));
        assert_eq!(by_half.next(16_875.0, true, 4), Next::Step(20_000.0));
        let by_2000 = search("+2000", 9_000.0, 10);
        assert_eq!(by_2000.next(4_000.0, true, 1), Next::Step(6_000.0));
        assert_eq!(by_2000.next(8_000.0, true, 3), Next::Step(9_000.0));
    }

    #[test]
    fn the_search_stops_on_failure_at_the_maximum_rate_or_after_the_last_step() {
        let s = search("+1000", 5_000.0, 3);
        assert_eq!(s.next(2_000.0, false, 1), Next::Stop(Stop::StepFailed));
        assert_eq!(s.next(5_000.0, true, 2), Next::Stop(Stop::MaxRateReached));
        assert_eq!(s.next(4_000.0, true, 3), Next::Stop(Stop::MaxStepsRun));
    }

    #[test]
    fn a_search_climbs_in_bounded_steps() {
        for (step, max_steps) in [("x1.01", 20), ("+1", 20), ("x10", 1)] {
            let s = search(step, 1_000_000.0, max_steps);
            let (mut rate, mut steps) = (1.0, 1);
            while let Next::Step(next) = s.next(rate, true, steps) {
                assert!(next > rate && next <= s.max_rate);
                rate = next;
                steps += 1;
            }
            assert!(steps <= max_steps);
        }
    }

    #[test]
    fn steps_parse_and_print_back() {
        assert_eq!("x1.5".parse::<Growth>(), Ok(Growth::Factor(1.5)));
        assert_eq!("+2500".parse::<Growth>(), Ok(Growth::Increment(2500.0)));
        assert_eq!(Growth::Factor(1.5).to_string(), "x1.5");
        assert_eq!(Growth::Increment(2500.0).to_string(), "+2500");
        for bad in ["1.5", "x1", "x0.5", "+0", "+-5", "xNaN", "+inf", "x", ""] {
            assert!(bad.parse::<Growth>().is_err(), "{bad}");
        }
    }

    #[test]
    fn searches_are_validated() {
        assert!(search("x2", 10_000.0, 5).validate(1_000.0).is_ok());
        assert!(search("x2", 500.0, 5).validate(1_000.0).is_err());
        assert!(search("x2", 2_000_000.0, 5).validate(1_000.0).is_err());
        assert!(search("x2", 10_000.0, 0).validate(1_000.0).is_err());
        assert!(search("x2", 10_000.0, 21).validate(1_000.0).is_err());
    }
}
