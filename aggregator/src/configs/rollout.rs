//! Staged rollout, sans I/O: given how each agent of the current wave is
//! doing with the new version, move the rollout on (next wave, done) or
//! halt it. The manager calls [`advance`] with the time and a view of the
//! agents; nothing here sends or stores anything.

use std::time::Duration;

use super::store::{Rollout, RolloutState};

/// How one agent is doing with the version being rolled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentProgress {
    /// Acknowledged it and every collector succeeded its first cycle.
    Healthy,
    /// Refused it, rolled it back, or some collector failed; the reason.
    Failed(String),
    /// Not acknowledged yet (or offline).
    Pending,
}

/// How many agents a `--canary` value means out of `agents`: a count, or a
/// percentage rounded up (at least one agent when there are any).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Canary {
    Agents(usize),
    Percent(f64),
}

impl Canary {
    pub fn parse(text: &str) -> Result<Canary, String> {
        let bad =
            || format!("{text:?} is not a canary size (expected a number of agents like 1, or a percentage like 10%)");
        match text.trim().strip_suffix('%') {
            Some(percent) => {
                let value: f64 = percent.trim().parse().map_err(|_| bad())?;
                if !(value > 0.0 && value <= 100.0) {
                    return Err(bad());
                }
                Ok(Canary::Percent(value))
            }
            None => text.trim().parse().map(Canary::Agents).map_err(|_| bad()),
        }
    }

    pub fn of(self, agents: usize) -> usize {
        match self {
            Canary::Agents(n) => n.min(agents),
            Canary::Percent(p) => ((agents as f64 * p / 100.0).ceil() as usize).clamp(usize::from(agents > 0), agents),
        }
    }
}

/// Moves `rollout` on at `now_ms`; returns whether anything changed.
/// A wave is done when every agent in it is healthy; agents still pending
/// when `wait` has passed count as failed. More failures (over every wave
/// so far) than `max_failures` halt the rollout, with the reasons.
pub fn advance(rollout: &mut Rollout, now_ms: i64, progress: impl Fn(&str) -> AgentProgress) -> bool {
    if rollout.state != RolloutState::Running {
        return false;
    }
    let released = rollout.released.min(rollout.agents.len());
    let waited = Duration::from_millis(u64::try_from(now_ms - rollout.wave_started_ms).unwrap_or(0));
    let wait_over = waited >= Duration::from_millis(rollout.wait_ms);
    let mut failures: Vec<String> = Vec::new();
    let mut pending = 0usize;
    for (index, agent) in rollout.agents[..released].iter().enumerate() {
        match progress(agent) {
            AgentProgress::Healthy => {}
            AgentProgress::Failed(reason) => failures.push(format!("{agent}: {reason}")),
            AgentProgress::Pending if index >= rollout.wave_start => {
                if wait_over {
                    failures.push(format!(
                        "{agent}: no healthy acknowledgement within {}",
                        humantime::format_duration(Duration::from_millis(rollout.wait_ms))
                    ));
                } else {
                    pending += 1;
                }
            }
            // An earlier wave's agent that went away since does not hold this one up.
            AgentProgress::Pending => {}
        }
    }
    if failures.len() > rollout.max_failures {
        rollout.state = RolloutState::Halted;
        rollout.reason = format!(
            "halted after {} of {} agents refused or failed (at most {} allowed): {}",
            failures.len(),
            released,
            rollout.max_failures,
            failures.join("; ")
        );
        return true;
    }
    if pending > 0 {
        return false;
    }
    if released >= rollout.agents.len() {
        rollout.state = RolloutState::Done;
        rollout.reason =
            if failures.is_empty() { String::new() } else { format!("done with failures: {}", failures.join("; ")) };
        return true;
    }
    rollout.wave_start = released;
    let wave = if rollout.wave_size == 0 { rollout.agents.len() } else { rollout.wave_size };
    rollout.released = (released + wave).min(rollout.agents.len());
    rollout.wave_started_ms = now_ms;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(agents: usize, canary: usize, wave_size: usize, max_failures: usize) -> Rollout {
        Rollout {
            id: 1,
            profile: "web".into(),
            version: 7,
            from_version: 6,
            agents: (0..agents).map(|i| format!("a{i}")).collect(),
            canary,
            wave_size,
            wait_ms: 1000,
            max_failures,
            released: canary,
            wave_start: 0,
            wave_started_ms: 0,
            state: RolloutState::Running,
            reason: String::new(),
            author: "ops".into(),
        }
    }

    #[test]
    fn a_failing_canary_halts_and_holds_the_rest() {
        let mut r = rollout(5, 1, 2, 0);
        assert!(!advance(&mut r, 10, |_| AgentProgress::Pending));
        assert!(advance(&mut r, 20, |a| if a == "a0" {
            AgentProgress::Failed("refused".into())
        } else {
            AgentProgress::Pending
        }));
        assert_eq!(r.state, RolloutState::Halted);
        assert!(r.reason.contains("a0: refused"), "{}", r.reason);
        assert_eq!(r.released, 1);
        assert!(r.holds("a1") && !r.holds("a0"));
    }

    #[test]
    fn healthy_waves_release_the_next_until_done() {
        let mut r = rollout(5, 1, 2, 0);
        assert!(advance(&mut r, 10, |_| AgentProgress::Healthy));
        assert_eq!((r.wave_start, r.released), (1, 3));
        assert!(advance(&mut r, 20, |_| AgentProgress::Healthy));
        assert_eq!((r.wave_start, r.released), (3, 5));
        assert!(advance(&mut r, 30, |_| AgentProgress::Healthy));
        assert_eq!(r.state, RolloutState::Done);
        assert!(!r.holds("a4"));
    }

    #[test]
    fn silence_past_the_wait_counts_as_failure() {
        let mut r = rollout(3, 1, 0, 0);
        assert!(!advance(&mut r, 999, |_| AgentProgress::Pending));
        assert!(advance(&mut r, 1000, |_| AgentProgress::Pending));
        assert_eq!(r.state, RolloutState::Halted);
        assert!(r.reason.contains("no healthy acknowledgement within 1s"), "{}", r.reason);
    }

    #[test]
    fn canary_sizes() {
        assert_eq!(Canary::parse("1").unwrap().of(5), 1);
        assert_eq!(Canary::parse("10%").unwrap().of(5), 1);
        assert_eq!(Canary::parse("50%").unwrap().of(5), 3);
        assert_eq!(Canary::parse("9").unwrap().of(5), 5);
        assert!(Canary::parse("0%").is_err() && Canary::parse("x").is_err());
    }
}
