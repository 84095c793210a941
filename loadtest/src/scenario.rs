//! Scenarios as data: a TOML file in loadtest/scenarios says what one
//! standard run is (its kind, how many nodes it needs and in which delivery
//! mode, and its load), so that scripts/bench and a person at a terminal run
//! the same thing, and a change of load is a reviewed change of a file. The
//! targets (node addresses, pids) stay on the command line: only whoever
//! started the nodes knows them.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};

use crate::targets::Targets;
use crate::{chat, idle, saturate};

const MAX_NODES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Idle,
    Chat,
    Saturate,
}

/// The nodes' `--delivery` mode.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    Fast,
    Durable,
}

/// A scenario file as written: the kind names the tables it takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    kind: Kind,
    nodes: usize,
    delivery: Delivery,
    idle: Option<idle::Load>,
    chat: Option<chat::Load>,
    saturate: Option<saturate::Search>,
}

/// A scenario file, checked.
#[derive(Debug)]
pub struct Scenario {
    /// The file's name without `.toml`.
    pub name: String,
    pub nodes: usize,
    pub delivery: Delivery,
    pub plan: Plan,
}

/// What a scenario runs.
#[derive(Debug)]
pub enum Plan {
    Idle(idle::Load),
    Chat(chat::Load),
    /// Chat steps of this load, the first at its rate.
    Saturate(chat::Load, saturate::Search),
}

impl Kind {
    fn tables(self) -> &'static str {
        match self {
            Self::Idle => "an [idle] table and no other",
            Self::Chat => "a [chat] table and no other",
            Self::Saturate => "a [chat] and a [saturate] table and no other",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Idle => "idle",
            Self::Chat => "chat",
            Self::Saturate => "saturate",
        })
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fast => "fast",
            Self::Durable => "durable",
        })
    }
}

impl Plan {
    fn kind(&self) -> Kind {
        match self {
            Self::Idle(_) => Kind::Idle,
            Self::Chat(_) => Kind::Chat,
            Self::Saturate(..) => Kind::Saturate,
        }
    }
}

impl Scenario {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.file_stem().and_then(|s| s.to_str()).context("a scenario file needs a UTF-8 name")?;
        Self::parse(name, &text).with_context(|| format!("scenario {}", path.display()))
    }

    fn parse(name: &str, text: &str) -> anyhow::Result<Self> {
        let file: File = toml::from_str(text)?;
        if file.nodes == 0 || file.nodes > MAX_NODES {
            bail!("nodes must be 1 to {MAX_NODES}");
        }
        let plan = match (file.kind, file.idle, file.chat, file.saturate) {
            (Kind::Idle, Some(idle), None, None) => {
                idle.validate()?;
                Plan::Idle(idle)
            }
            (Kind::Chat, None, Some(chat), None) => {
                chat.validate()?;
                Plan::Chat(chat)
            }
            (Kind::Saturate, None, Some(chat), Some(search)) => {
                chat.validate()?;
                search.validate(chat.rate)?;
                Plan::Saturate(chat, search)
            }
            (kind, ..) => bail!("kind = \"{kind}\" takes {}", kind.tables()),
        };
        Ok(Self { name: name.to_owned(), nodes: file.nodes, delivery: file.delivery, plan })
    }

    /// Fails unless `targets` has the number of nodes the scenario is for.
    pub fn check(&self, targets: &Targets) -> anyhow::Result<()> {
        if targets.nodes.len() != self.nodes {
            bail!(
                "scenario {} is for {} node(s), and --node was given {} time(s)",
                self.name,
                self.nodes,
                targets.nodes.len()
            );
        }
        Ok(())
    }

    /// What scripts/bench needs to start the nodes, one `key=value` a line.
    pub fn shell_info(&self) -> String {
        format!("kind={}\nnodes={}\ndelivery={}\n", self.plan.kind(), self.nodes, self.delivery)
    }
}

/// Reads a value written as text that `T::from_str` parses.
pub fn from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err: fmt::Display>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// Reads a duration written as text: "10s", "500ms", "1m 30s".
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    from_str::<D, humantime::Duration>(deserializer).map(Duration::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = r#"
        kind = "chat"
        nodes = 2
        delivery = "durable"

        [chat]
        users = 200
        rate = 10000
        warmup = "2s"
        duration = "10s"
        body_bytes = 100
        ack = true
        protocol = "json"
        seed = 7
    "#;

    #[test]
    fn every_scenario_file_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("loadtest/scenarios") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let scenario = Scenario::read(&path).unwrap_or_else(|e| panic!("{e:#}"));
                names.push(scenario.name);
            }
        }
        names.sort();
        for expected in ["smoke", "single-fast-10k", "cross-durable-40k", "idle-10k", "saturate-cross-fast"] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
    }

    #[test]
    fn a_chat_scenario_reads_as_written() {
        let scenario = Scenario::parse("cross", CHAT).expect("parses");
        assert_eq!((scenario.nodes, scenario.delivery), (2, Delivery::Durable));
        let Plan::Chat(load) = &scenario.plan else { panic!("not chat: {scenario:?}") };
        assert_eq!((load.users, load.rate, load.body_bytes, load.ack, load.seed), (200, 10_000.0, 100, true, Some(7)));
        assert_eq!((load.warmup, load.duration), (Duration::from_secs(2), Duration::from_secs(10)));
        assert_eq!(scenario.shell_info(), "kind=chat\nnodes=2\ndelivery=durable\n");
    }

    #[test]
    fn a_saturate_scenario_reads_as_written() {
        let text = CHAT.replace("kind = \"chat\"", "kind = \"saturate\"")
            + "\n[saturate]\nstep = \"+2500\"\nmax_rate = 30000\nmax_steps = 8\n";
        let scenario = Scenario::parse("search", &text).expect("parses");
        let Plan::Saturate(load, search) = &scenario.plan else { panic!("not saturate: {scenario:?}") };
        assert_eq!(load.rate, 10_000.0);
        assert_eq!(
            (search.step, search.max_rate, search.max_steps),
            (saturate::Growth::Increment(2500.0), 30_000.0, 8)
        );
        assert!(scenario.shell_info().starts_with("kind=saturate\n"));
    }

    #[test]
    fn an_idle_scenario_reads_as_written() {
        let text = "kind = \"idle\"\nnodes = 1\ndelivery = \"fast\"\n\
                    [idle]\nconnections = 10000\nconcurrency = 200\nhold = \"2s\"\n";
        let scenario = Scenario::parse("idle", text).expect("parses");
        let Plan::Idle(load) = &scenario.plan else { panic!("not idle: {scenario:?}") };
        assert_eq!((load.connections, load.concurrency, load.hold), (10_000, 200, Duration::from_secs(2)));
    }

    #[test]
    fn mistakes_are_refused() {
        let cases = [
            ("kind = \"chat\"", "kind = \"idle\""),
            ("kind = \"chat\"", "kind = \"saturate\""),
            ("kind = \"chat\"", "kind = \"soak\""),
            ("nodes = 2", "nodes = 0"),
            ("delivery = \"durable\"", "delivery = \"slow\""),
            ("users = 200", "users = 1"),
            ("users = 200", "userz = 200"),
            ("ack = true\n", ""),
            ("duration = \"10s\"", "duration = \"10 parsecs\""),
            ("duration = \"10s\"", "duration = 10"),
            ("protocol = \"json\"", "protocol = \"xml\""),
            ("rate = 10000", "rate = 0"),
        ];
        for (from, to) in cases {
            let text = CHAT.replace(from, to);
            assert_ne!(text, CHAT, "{from} not in the example");
            assert!(Scenario::parse("bad", &text).is_err(), "accepted {to:?}");
        }
        assert!(
            Scenario::parse("bad", &(CHAT.to_owned() + "\n[idle]\nconnections = 1\nconcurrency = 1\nhold = \"1s\"\n"))
                .is_err()
        );
    }
}
