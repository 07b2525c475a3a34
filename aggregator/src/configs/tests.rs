//! The manager driven as ingest drives it: agents say hello, pushes come
//! out of their session channels, acknowledgements go back in.

use std::collections::BTreeMap;
use std::time::Duration;

use herd_common::config::pushed::content_hash;
use herd_common::protocol::{CollectorHealth, ConfigAck, ConfigOutcome, ConfigPush, Hello};
use tokio::sync::mpsc;

use super::*;

const LOCAL: &str = r#"
[agent]
id = "AGENT"
[uplink]
endpoints = ["agg:7400"]
ca_file = "ca.pem"
cert_file = "a.pem"
key_file = "a-key.pem"
[collect]
interval = "10s"
"#;

struct Fleet {
    _dir: tempfile::TempDir,
    manager: ConfigManager,
    sessions: BTreeMap<String, mpsc::Receiver<ConfigPush>>,
}

impl Fleet {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manager = ConfigManager::open(dir.path(), 3).unwrap();
        Self { _dir: dir, manager, sessions: BTreeMap::new() }
    }

    fn connect(&mut self, agent: &str, role: &str, version: u64, hash: &str) {
        let hello = Hello {
            agent_id: agent.into(),
            hostname: agent.into(),
            labels: vec![("role".into(), role.into())],
            config_version: version,
            config_hash: hash.into(),
            local_config: LOCAL.replace("AGENT", agent),
            local_config_dir: "/etc/herd".into(),
            ..Hello::default()
        };
        let labels = [("role".to_owned(), role.to_owned()), ("agent".to_owned(), agent.to_owned())].into();
        let rx = self.manager.connected(agent, 1, &hello, labels);
        self.sessions.insert(agent.into(), rx);
    }

    fn pushed(&mut self, agent: &str) -> Option<ConfigPush> {
        self.sessions.get_mut(agent).unwrap().try_recv().ok()
    }

    /// The agent answers `push` with `outcome` (collectors all fine unless `failing`).
    fn answer(&self, agent: &str, push: &ConfigPush, outcome: ConfigOutcome, error: Option<&str>) {
        let applied = outcome == ConfigOutcome::Applied;
        self.manager.acked(
            agent,
            ConfigAck {
                version: push.version,
                outcome,
                running_version: if applied { push.version } else { 0 },
                running_profile: if applied { push.profile.clone() } else { String::new() },
                running_hash: if applied { push.hash.clone() } else { String::new() },
                effective_hash: "sha256:e".into(),
                error: error.map(str::to_owned),
                collectors: vec![CollectorHealth { name: "host".into(), error: None }],
            },
        );
    }

    fn state(&self, agent: &str) -> ConfigState {
        self.manager.agent_status(agent).unwrap().state
    }
}

fn request(profile: &str, selector: &str, priority: i64, body: &str) -> PushRequest {
    PushRequest {
        profile: profile.into(),
        selector: selector.into(),
        priority,
        body: body.into(),
        message: "test".into(),
        dry_run: false,
        canary: None,
        wave_size: 0,
        wait: Duration::from_secs(60),
        max_failures: 0,
    }
}

#[tokio::test]
async fn a_push_reaches_only_matching_agents_and_is_tracked_to_applied() {
    let mut fleet = Fleet::new();
    fleet.connect("db-1", "postgres", 0, "");
    fleet.connect("web-1", "web", 0, "");
    let body = "[collect]\ninterval = \"5s\"\n";
    let outcome = fleet.manager.push(request("db", "{role=\"postgres\"}", 0, body), "ops").await.unwrap();
    let PushOutcome::Created { version, agents, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!((version, agents), (1, vec!["db-1".to_owned()]));
    assert!(fleet.pushed("web-1").is_none());
    let push = fleet.pushed("db-1").expect("the matching agent gets it");
    assert_eq!((push.version, push.toml.as_str(), push.hash.clone()), (1, body, content_hash(body)));
    assert_eq!(fleet.state("db-1"), ConfigState::Applying);
    assert!(fleet.pushed("db-1").is_none(), "not sent twice on one connection");
    fleet.answer("db-1", &push, ConfigOutcome::Applied, None);
    assert_eq!(fleet.state("db-1"), ConfigState::Applied);
    assert_eq!(fleet.state("web-1"), ConfigState::Applied, "runs its desired: the local file");
    // The same body again is no new version.
    let again = fleet.manager.push(request("db", "{role=\"postgres\"}", 0, body), "ops").await.unwrap();
    assert!(matches!(again, PushOutcome::Unchanged { version: 1, .. }), "{again:?}");
}

#[tokio::test]
async fn invalid_bodies_local_keys_and_ties_are_refused_before_anything_is_sent() {
    let mut fleet = Fleet::new();
    fleet.connect("db-1", "postgres", 0, "");
    for (body, needle) in [
        ("[uplink]\nendpoints = [\"evil:1\"]\n", "uplink: stays in the agent's local file"),
        ("[agent]\nid = \"x\"\n", "agent.id: stays in the agent's local file"),
        ("[collect]\ninterval = \"1ms\"\n", "db-1: db@1: collect.interval: must be at least 100ms"),
        ("[collect\n", "TOML"),
    ] {
        let err = fleet.manager.push(request("db", "{}", 0, body), "ops").await.unwrap_err().to_string();
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    assert!(fleet.pushed("db-1").is_none());
    assert!(fleet.manager.profiles().is_empty(), "nothing stored");
    fleet.manager.push(request("a", "{role=\"postgres\"}", 5, ""), "ops").await.unwrap();
    let err = fleet.manager.push(request("b", "{}", 5, ""), "ops").await.unwrap_err();
    assert!(matches!(err, PushError::Conflict(_)) && err.to_string().contains("\"a\" and \"b\""), "{err}");
    fleet.manager.push(request("b", "{}", 1, ""), "ops").await.unwrap();
}

#[tokio::test]
async fn dry_runs_show_the_diff_and_store_nothing() {
    let mut fleet = Fleet::new();
    fleet.connect("db-1", "postgres", 0, "");
    let mut dry = request("db", "{}", 0, "[collect]\ninterval = \"5s\"\n");
    dry.dry_run = true;
    let PushOutcome::DryRun { agents, problems } = fleet.manager.push(dry, "ops").await.unwrap() else { panic!() };
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(agents.len(), 1);
    assert!(
        agents[0].diff.contains("-interval = \"10s\"") && agents[0].diff.contains("+interval = \"5s\""),
        "{}",
        agents[0].diff
    );
    assert!(fleet.manager.profiles().is_empty() && fleet.pushed("db-1").is_none());
}

#[tokio::test]
async fn a_failing_canary_halts_the_rollout_and_the_rest_never_get_it() {
    let mut fleet = Fleet::new();
    for i in 0..5 {
        fleet.connect(&format!("web-{i}"), "web", 0, "");
    }
    let mut staged = request("web", "{role=\"web\"}", 0, "[collect]\ninterval = \"5s\"\n");
    staged.canary = Some(Canary::Agents(1));
    staged.wave_size = 2;
    let PushOutcome::Created { rollout: Some(_), .. } = fleet.manager.push(staged, "ops").await.unwrap() else {
        panic!()
    };
    let pushed: Vec<(String, ConfigPush)> =
        (0..5).filter_map(|i| Some((format!("web-{i}"), fleet.pushed(&format!("web-{i}"))?))).collect();
    assert_eq!(pushed.len(), 1, "only the canary");
    let (canary, push) = &pushed[0];
    fleet.answer(canary, push, ConfigOutcome::Refused, Some("web@1: collect.redis[0].password_file: cannot read"));
    let rollout = &fleet.manager.rollouts()[0];
    assert_eq!(rollout.state, RolloutState::Halted);
    assert!(rollout.reason.contains("password_file"), "{}", rollout.reason);
    for i in 0..5 {
        let agent = format!("web-{i}");
        assert!(fleet.pushed(&agent).is_none(), "{agent} never gets it");
        if agent != *canary {
            assert_eq!(fleet.manager.agent_status(&agent).unwrap().held_by_rollout, Some(rollout.id));
        }
    }
    assert_eq!(fleet.state(canary), ConfigState::Refused);
    // Abort returns everyone to what they had: the local file.
    fleet.manager.abort("web", "ops").await.unwrap();
    for i in 0..5 {
        assert_eq!(fleet.state(&format!("web-{i}")), ConfigState::Applied);
    }
}

#[tokio::test]
async fn healthy_waves_roll_on_and_rollback_returns_the_previous_version() {
    let mut fleet = Fleet::new();
    for i in 0..3 {
        fleet.connect(&format!("web-{i}"), "web", 0, "");
    }
    fleet.manager.push(request("web", "{}", 0, "[collect]\ninterval = \"5s\"\n"), "ops").await.unwrap();
    let mut v1 = Vec::new();
    for i in 0..3 {
        let agent = format!("web-{i}");
        let push = fleet.pushed(&agent).unwrap();
        fleet.answer(&agent, &push, ConfigOutcome::Applied, None);
        v1.push(push);
    }
    let mut staged = request("web", "{}", 0, "[collect]\ninterval = \"2s\"\n");
    staged.canary = Some(Canary::Agents(1));
    staged.wave_size = 1;
    fleet.manager.push(staged, "ops").await.unwrap();
    for _wave in 0..3 {
        let (agent, push) = (0..3)
            .find_map(|i| Some((format!("web-{i}"), fleet.pushed(&format!("web-{i}"))?)))
            .expect("one agent per wave");
        assert_eq!(push.version, 2);
        fleet.answer(&agent, &push, ConfigOutcome::Applied, None);
    }
    assert_eq!(fleet.manager.rollouts()[0].state, RolloutState::Done);
    assert_eq!(fleet.manager.rollback("web", None, "ops").await.unwrap(), 1);
    for (i, first) in v1.iter().enumerate() {
        let agent = format!("web-{i}");
        let push = fleet.pushed(&agent).expect("rollback is pushed");
        assert_eq!((push.version, push.hash.as_str()), (1, first.hash.as_str()));
    }
    let diff = fleet.manager.diff("web", 1, 2).unwrap();
    assert!(diff.contains("-interval = \"5s\"") && diff.contains("+interval = \"2s\""), "{diff}");
}

#[tokio::test]
async fn an_agent_offline_during_a_push_gets_it_on_reconnect_and_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let manager = ConfigManager::open(dir.path(), 3).unwrap();
    let hello = Hello {
        labels: vec![("role".into(), "db".into())],
        local_config: LOCAL.replace("AGENT", "db-1"),
        ..Hello::default()
    };
    let labels: BTreeMap<String, String> = [("role".to_owned(), "db".to_owned())].into();
    drop(manager.connected("db-1", 1, &hello, labels.clone()));
    manager.disconnected("db-1", 1);
    manager.push(request("db", "{role=\"db\"}", 0, "[collect]\ninterval = \"5s\"\n"), "ops").await.unwrap();
    assert_eq!(manager.agent_status("db-1").unwrap().state, ConfigState::Offline);
    drop(manager);
    let manager = ConfigManager::open(dir.path(), 3).unwrap();
    let mut rx = manager.connected("db-1", 2, &hello, labels);
    let push = rx.try_recv().expect("sent on reconnect");
    assert_eq!(push.version, 1);
    assert_eq!(manager.profile("db").unwrap().versions[0].author, "ops");
}
