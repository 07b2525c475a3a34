//! Remote configuration end to end: real `herd-aggregator` and `herd-agent`
//! processes, a real PostgreSQL and Redis, pushes made with the
//! `herd-aggregator config` CLI through the authenticated HTTP API, and
//! their effects checked where operators see them: the store (sample
//! spacing, staleness), `config status`, the agents' own metrics and PIDs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_tests::servers::{PASSWORD, Postgres, Redis, secret_file};
use herd_tests::{
    Aggregator, Pki, Process, agent_config_with, bin, encode, free_tcp_port, free_udp_port, start_agent, vector_result,
    wait_for,
};
use serde_json::Value as Json;

const ADMIN_TOKEN: &str = "admin-token-for-remote-config-tests";

struct Fleet {
    work: tempfile::TempDir,
    pki: Pki,
    aggregator: Aggregator,
    token: PathBuf,
}

impl Fleet {
    fn start() -> Self {
        let work = tempfile::tempdir().unwrap();
        let pki = Pki::create(work.path().join("pki"));
        let token = secret_file(&work.path().join("admin.token"), ADMIN_TOKEN);
        let http = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let quic = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let aggregator =
            Aggregator::start_configured(&pki, work.path(), "aggregator", http, quic, &Self::http_section(&token));
        Self { work, pki, aggregator, token }
    }

    fn http_section(token: &Path) -> String {
        format!(
            "[http]\nanonymous_role = \"viewer\"\n[[http.tokens]]\nname = \"ops\"\nrole = \"admin\"\ntoken_file = \"{}\"\n",
            token.display()
        )
    }

    fn restart_aggregator(&mut self) {
        self.aggregator.process.kill();
        let (http, quic) = (self.aggregator.http, self.aggregator.quic);
        self.aggregator = Aggregator::start_configured(
            &self.pki,
            self.work.path(),
            "aggregator",
            http,
            quic,
            &Self::http_section(&self.token),
        );
    }

    /// Starts agent `name` with `labels` (TOML inline table body) and `tail` after `[collect]`.
    fn agent(&self, name: &str, labels: &str, interval: &str, tail: &str) -> (PathBuf, Process) {
        self.pki.issue_agent(name);
        let tail = format!("{tail}\n[agent.labels]\n{labels}\n");
        let config = agent_config_with(self.work.path(), &self.pki, name, &[self.aggregator.quic], interval, "", &tail);
        let process = start_agent(self.work.path(), name, &config);
        (config, process)
    }

    /// `herd-aggregator config ARGS` against this aggregator, with the admin token unless `token` is false.
    fn config(&self, token: bool, args: &[&str]) -> (bool, String) {
        let mut command = Command::new(bin("herd-aggregator"));
        command.arg("config").args(args).arg("--url").arg(format!("http://{}", self.aggregator.http));
        if token {
            command.arg("--token-file").arg(&self.token);
        }
        let output = command.env_remove("HERD_TOKEN").env_remove("HERD_TOKEN_FILE").output().expect("run the CLI");
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    /// Pushes `body` as `profile` for `selector`; panics unless the CLI succeeds.
    fn push(&self, profile: &str, selector: &str, body: &str, extra: &[&str]) -> String {
        let file = self.work.path().join(format!("{profile}-{}.toml", fastrand::u32(..)));
        std::fs::write(&file, body).unwrap();
        let mut args = vec!["push", "--profile", profile, "--selector", selector, "--message", "test push"];
        args.extend_from_slice(extra);
        args.push(file.to_str().unwrap());
        let (ok, text) = self.config(true, &args);
        assert!(ok, "config push failed:\n{text}");
        text
    }

    fn status(&self, agent: &str) -> Json {
        let (code, body) = self.aggregator.get("/api/v1/configs/status").expect("aggregator reachable");
        assert_eq!(code, 200, "{body}");
        let json: Json = serde_json::from_str(&body).unwrap();
        json["data"].as_array().unwrap().iter().find(|s| s["agent"] == agent).cloned().unwrap_or(Json::Null)
    }

    fn wait_state(&self, agent: &str, state: &str, version: u64) -> Json {
        wait_for(Duration::from_secs(30), || {
            let status = self.status(agent);
            (status["state"] == state && status["desiredVersion"] == version).then_some(status)
        })
        .unwrap_or_else(|| panic!("{agent} not {state} at version {version}: {}", self.status(agent)))
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Sample timestamps of one series over the last two minutes.
fn times(aggregator: &Aggregator, selector: &str) -> Vec<i64> {
    herd_tests::sample_times(aggregator, selector, "2m")
}

fn median_spacing(times: &[i64], from_ms: i64, to_ms: i64) -> i64 {
    let window: Vec<i64> = times.iter().copied().filter(|&t| t >= from_ms && t <= to_ms).collect();
    let mut gaps: Vec<i64> = window.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    assert!(gaps.len() >= 3, "too few samples between {from_ms} and {to_ms}: {window:?}");
    gaps[gaps.len() / 2]
}

/// Whether `selector` has a value at every 200 ms step of `from..to`: a
/// staleness marker would leave steps without one.
fn present_throughout(aggregator: &Aggregator, selector: &str, from_ms: i64, to_ms: i64) -> bool {
    let path = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=0.2",
        encode(selector),
        from_ms as f64 / 1000.0,
        to_ms as f64 / 1000.0
    );
    let (_, body) = aggregator.get(&path).expect("aggregator reachable");
    let json: Json = serde_json::from_str(&body).unwrap();
    let result = json["data"]["result"].as_array().cloned().unwrap_or_default();
    let expected = ((to_ms - from_ms) / 200 + 1) as usize;
    result.len() == 1 && result[0]["values"].as_array().map_or(0, Vec::len) == expected
}

fn agent_metric(aggregator: &Aggregator, selector: &str) -> Option<f64> {
    vector_result(&aggregator.query(selector)).first().and_then(|s| s["value"][1].as_str()?.parse().ok())
}

fn wait_series(aggregator: &Aggregator, selector: &str, limit: Duration) -> bool {
    wait_for(limit, || (!vector_result(&aggregator.query(selector)).is_empty()).then_some(())).is_some()
}

#[test]
fn pushes_reach_only_their_agents_and_apply_live_refusals_and_rollback_included() {
    let postgres = Postgres::start();
    let redis = Redis::start();
    let fleet = Fleet::start();
    let pg_password = secret_file(&fleet.work.path().join("pg.pw"), PASSWORD);
    let redis_password = secret_file(&fleet.work.path().join("redis.pw"), PASSWORD);
    let postgres_entry = |interval: &str| {
        format!(
            "[[collect.postgres]]\ndsn = \"{}\"\npassword_file = \"{}\"\ninterval = \"{interval}\"\nstatements_limit = 0\n",
            postgres.dsn("postgres"),
            pg_password.display()
        )
    };
    let (_, mut db) = fleet.agent("db-1", "role = \"postgres\"", "1s", &postgres_entry("1s"));
    let (_, mut cache) = fleet.agent("cache-1", "role = \"redis\"", "1s", "");
    let (_, web) = fleet.agent("web-1", "role = \"web\"", "1s", "");
    let aggregator = &fleet.aggregator;
    for agent in ["db-1", "cache-1", "web-1"] {
        fleet.wait_state(agent, "applied", 0);
    }
    assert!(wait_series(aggregator, "pg_up{instance=\"db-1\"} == 1", Duration::from_secs(20)), "{}", db.log());
    // Enough history at the old spacing to compare with.
    assert!(
        wait_for(Duration::from_secs(20), || (times(aggregator, "pg_up{instance=\"db-1\"}").len() >= 7).then_some(()))
            .is_some()
    );

    // Without a token: 401, nothing stored or sent.
    let (ok, text) =
        fleet.config(false, &["push", "--profile", "db", "--selector", "{role=\"postgres\"}", "/dev/null"]);
    assert!(!ok && text.contains("bearer token"), "{text}");
    let (code, _) = aggregator.get("/api/v1/configs").unwrap();
    assert_eq!(code, 200, "reads stay open to the anonymous viewer");
    assert!(fleet.config(true, &["list"]).1.lines().count() == 1, "no profile was created");

    // Refused at push time, naming the key; nothing is sent.
    let bad = fleet.work.path().join("bad.toml");
    for (body, needle) in [
        ("[uplink]\nendpoints = [\"evil:7400\"]\n", "uplink: stays in the agent's local file"),
        ("[agent]\nid = \"web-2\"\n", "agent.id: stays in the agent's local file"),
        ("[collect]\ninterval = \"1ms\"\n", "collect.interval: must be at least 100ms"),
    ] {
        std::fs::write(&bad, body).unwrap();
        let (ok, text) = fleet.config(true, &["push", "--profile", "db", "--selector", "{}", bad.to_str().unwrap()]);
        assert!(!ok && text.contains(needle), "{needle:?} in:\n{text}");
    }
    assert!(fleet.config(true, &["list"]).1.lines().count() == 1, "nothing stored");

    // A new interval for the PostgreSQL collector of the postgres agent only.
    let pid = db.pid();
    let before_push = now_ms();
    let text = fleet.push("db", "{role=\"postgres\"}", &postgres_entry("500ms"), &[]);
    assert!(text.contains("pushed db@1") && text.contains("db-1") && !text.contains("web-1"), "{text}");
    let status = fleet.wait_state("db-1", "applied", 1);
    assert_eq!(status["appliedVersion"], 1);
    assert!(status["collectors"].as_array().unwrap().iter().all(|c| c["ok"] == true), "{status}");
    let applied_at = now_ms();
    std::thread::sleep(Duration::from_secs(5));
    let after = now_ms();
    assert_eq!(db.pid(), pid);
    assert!(db.is_running(), "applied without a restart");
    let pg_times = times(aggregator, "pg_up{instance=\"db-1\"}");
    let (old, new) = (
        median_spacing(&pg_times, before_push - 6000, before_push),
        median_spacing(&pg_times, applied_at + 500, after),
    );
    assert!((900..=1100).contains(&old) && (400..=600).contains(&new), "pg_up spacing {old} ms, then {new} ms");
    // Its host collector kept its schedule: no gap, no staleness marker.
    let load_times = times(aggregator, "node_load1{instance=\"db-1\"}");
    assert!(herd_tests::covers(&load_times, before_push - 5000, after - 1000, 1600), "{load_times:?}");
    assert!(present_throughout(aggregator, "node_load1{instance=\"db-1\"}", before_push - 3000, after - 1000));
    // The others were never sent anything.
    for agent in ["cache-1", "web-1"] {
        let status = fleet.status(agent);
        assert_eq!(
            (status["state"].as_str(), status["appliedVersion"].as_u64()),
            (Some("applied"), Some(0)),
            "{status}"
        );
        assert_eq!(agent_metric(aggregator, &format!("herd_agent_config_version{{instance=\"{agent}\"}}")), Some(0.0));
    }
    assert!(!web.log().contains("pushed configuration"), "{}", web.log());

    // A Redis collector added to the redis agent, then taken away.
    let redis_entry = format!(
        "[[collect.redis]]\naddress = \"{}\"\npassword_file = \"{}\"\n",
        redis.address(),
        redis_password.display()
    );
    let pushed_at = std::time::Instant::now();
    fleet.push("cache", "{role=\"redis\"}", &redis_entry, &[]);
    assert!(wait_series(aggregator, "redis_up{instance=\"cache-1\"} == 1", Duration::from_secs(10)), "{}", cache.log());
    assert!(
        pushed_at.elapsed() < Duration::from_secs(2) + Duration::from_millis(1500),
        "within two intervals (and a round trip)"
    );
    fleet.wait_state("cache-1", "applied", 2);
    fleet.push("cache", "{role=\"redis\"}", "", &[]);
    fleet.wait_state("cache-1", "applied", 3);
    // Gone at once: ended by a staleness marker, not left to the 5 minute lookback.
    assert!(
        wait_for(Duration::from_secs(5), || vector_result(&aggregator.query("redis_up{instance=\"cache-1\"}"))
            .is_empty()
            .then_some(()))
        .is_some(),
        "redis_up still present"
    );

    // Valid here, unreadable on the agent's host: refused there, the old configuration keeps running.
    let refused =
        format!("[[collect.redis]]\naddress = \"{}\"\npassword_file = \"/nonexistent/redis.pw\"\n", redis.address());
    fleet.push("cache", "{role=\"redis\"}", &refused, &[]);
    let status = fleet.wait_state("cache-1", "refused", 4);
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("collect.redis[0].password_file: cannot read /nonexistent/redis.pw"), "{status}");
    assert_eq!(status["appliedVersion"], 3);
    let (ok, printed) = fleet.config(true, &["status", "--selector", "{role=\"redis\"}"]);
    assert!(
        ok && printed.contains("cache-1") && printed.contains("refused") && printed.contains("password_file"),
        "{printed}"
    );
    let last = times(aggregator, "node_load1{instance=\"cache-1\"}").last().copied().unwrap_or(0);
    assert!(
        wait_for(Duration::from_secs(5), || (times(aggregator, "node_load1{instance=\"cache-1\"}").last()
            > Some(&last))
        .then_some(()))
        .is_some(),
        "cache-1 keeps collecting"
    );
    assert!(cache.is_running());

    // Rollback: version 1 of the redis profile... its previous version (3, the empty body) is back.
    let (ok, text) = fleet.config(true, &["rollback", "cache"]);
    assert!(ok && text.contains("back on version 3"), "{text}");
    fleet.wait_state("cache-1", "applied", 3);
    let (ok, text) = fleet.config(true, &["diff", "cache@2", "cache@4"]);
    assert!(ok && text.contains("/nonexistent/redis.pw"), "{text}");
    let (ok, text) = fleet.config(true, &["show", "db@1"]);
    assert!(ok && text.contains("interval = \"500ms\"") && text.contains("by ops"), "{text}");
    let metrics = aggregator.get("/metrics").unwrap().1;
    assert!(metrics.contains("herd_config_pushes_total{result=\"created\"} 4"), "{metrics}");
    assert!(metrics.contains("herd_fleet_agents{config_state=\"applied\"} 3"), "{metrics}");
    // The same figures are in the store, for rules and dashboards.
    assert!(
        wait_for(Duration::from_secs(10), || (agent_metric(
            aggregator,
            "herd_config_pushes_total{result=\"created\"}"
        ) == Some(4.0))
        .then_some(()))
        .is_some(),
        "herd_config_pushes_total not in the store"
    );
    db.kill();
    cache.kill();
}

#[test]
fn offline_agents_get_pushes_on_reconnect_and_restart_on_last_known_good() {
    let mut fleet = Fleet::start();
    let (config, mut agent) = fleet.agent("web-2", "role = \"web\"", "1s", "");
    fleet.wait_state("web-2", "applied", 0);
    agent.kill();
    fleet.wait_state("web-2", "offline", 0);
    fleet.push("web", "{role=\"web\"}", "[collect]\ninterval = \"500ms\"\n", &[]);
    fleet.wait_state("web-2", "offline", 1);
    let mut agent = start_agent(fleet.work.path(), "web-2", &config);
    fleet.wait_state("web-2", "applied", 1);
    assert!(agent.log().contains("pushed configuration applied"), "{}", agent.log());

    // The aggregator goes away; the agent restarts meanwhile and comes up on what was pushed.
    fleet.aggregator.process.kill();
    agent.kill();
    let outage_start = now_ms();
    let agent = start_agent(fleet.work.path(), "web-2", &config);
    assert!(
        wait_for(Duration::from_secs(10), || agent
            .log()
            .contains("starting on the last-known-good pushed configuration")
            .then_some(()))
        .is_some(),
        "{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    let outage_end = now_ms();
    fleet.restart_aggregator();
    let aggregator = &fleet.aggregator;
    fleet.wait_state("web-2", "applied", 1);
    // What it collected during the outage arrives, at the pushed interval.
    let spacing = wait_for(Duration::from_secs(20), || {
        let times = times(aggregator, "node_load1{instance=\"web-2\"}");
        let window: Vec<i64> = times.iter().copied().filter(|&t| t > outage_start + 1000 && t < outage_end).collect();
        (window.len() >= 4).then(|| median_spacing(&window, outage_start, outage_end))
    })
    .expect("outage samples backfilled");
    assert!((400..=600).contains(&spacing), "spacing during the outage: {spacing} ms");
}

#[test]
fn a_failing_canary_halts_a_staged_rollout_and_collectors_all_failing_roll_back() {
    let fleet = Fleet::start();
    let agents: Vec<Process> =
        (0..5).map(|i| fleet.agent(&format!("edge-{i}"), "role = \"edge\"", "1s", "").1).collect();
    for i in 0..5 {
        fleet.wait_state(&format!("edge-{i}"), "applied", 0);
    }
    // Valid on the aggregator; every agent would refuse it (the password file is not on these hosts).
    let failing = "[[collect.redis]]\naddress = \"127.0.0.1:1\"\npassword_file = \"/nonexistent/edge.pw\"\n";
    let text = fleet.push("edge", "{role=\"edge\"}", failing, &["--canary", "1", "--wave-size", "2", "--wait", "20s"]);
    assert!(text.contains("staged rollout"), "{text}");
    let halted = wait_for(Duration::from_secs(30), || {
        let (_, body) = fleet.aggregator.get("/api/v1/configs/rollouts").unwrap();
        let json: Json = serde_json::from_str(&body).unwrap();
        json["data"].as_array().and_then(|r| r.first().cloned()).filter(|r| r["state"] == "halted")
    })
    .expect("the rollout halts");
    let canary = halted["agents"][0].as_str().unwrap().to_owned();
    assert!(halted["reason"].as_str().unwrap().contains(&format!("{canary}: ")), "{halted}");
    assert!(halted["reason"].as_str().unwrap().contains("password_file"), "{halted}");
    assert_eq!(fleet.status(&canary)["state"], "refused");
    let (ok, printed) = fleet.config(true, &["status"]);
    assert!(ok && printed.contains("halted") && printed.contains("held by rollout"), "{printed}");
    for (i, agent) in agents.iter().enumerate() {
        let name = format!("edge-{i}");
        if name != canary {
            let status = fleet.status(&name);
            assert_eq!(
                (status["state"].as_str(), status["desiredVersion"].as_u64()),
                (Some("applied"), Some(0)),
                "{status}"
            );
            assert!(!status["heldByRollout"].is_null(), "{status}");
            assert!(!agent.log().contains("pushed configuration"), "{name} never received it:\n{}", agent.log());
        }
    }
    let (ok, _) = fleet.config(true, &["abort", "edge"]);
    assert!(ok);

    // Applied, but every collector fails its first cycle: the agent rolls back by itself.
    let dead =
        "[collect.host]\nenabled = false\n[[collect.scrape]]\njob = \"app\"\nurl = \"http://127.0.0.1:1/metrics\"\n";
    fleet.push("edge", "{agent=\"edge-0\"}", dead, &["--priority", "10"]);
    let status = fleet.wait_state("edge-0", "rolled_back", 2);
    assert!(status["lastError"].as_str().unwrap().contains("every collector failed its first cycle"), "{status}");
    assert_eq!(status["appliedVersion"], 0);
    assert!(wait_series(&fleet.aggregator, "node_load1{instance=\"edge-0\"}", Duration::from_secs(5)));
}

/// Whether `selector` has no value now: its series were ended by staleness
/// markers (within `limit`), not left to the five-minute lookback.
fn ends_at_once(aggregator: &Aggregator, selector: &str) -> bool {
    wait_for(Duration::from_secs(5), || vector_result(&aggregator.query(selector)).is_empty().then_some(())).is_some()
}

#[test]
fn a_halted_rollout_resumes_after_a_fix_and_rollback_restores_an_applied_version_everywhere() {
    let redis = Redis::start();
    let fleet = Fleet::start();
    let names: Vec<String> = (0..4).map(|i| format!("app-{i}")).collect();
    let agents: Vec<Process> = names.iter().map(|n| fleet.agent(n, "role = \"app\"", "1s", "").1).collect();
    for name in &names {
        fleet.wait_state(name, "applied", 0);
    }
    let aggregator = &fleet.aggregator;

    // Version 1 everywhere at once; the agents report it themselves too.
    fleet.push("app", "{role=\"app\"}", "[collect]\ninterval = \"500ms\"\n", &[]);
    for name in &names {
        fleet.wait_state(name, "applied", 1);
        let reported = wait_for(Duration::from_secs(10), || {
            (agent_metric(aggregator, &format!("herd_agent_config_version{{instance=\"{name}\"}}")) == Some(1.0))
                .then_some(())
        });
        assert!(reported.is_some(), "{name} does not report version 1");
    }

    // Version 2 adds a label and a Redis collector whose password file is not
    // on the hosts yet: the canary refuses it and the rollout halts.
    let password = fleet.work.path().join("late.pw");
    let v2 = format!(
        "[collect]\ninterval = \"500ms\"\n[agent.labels]\nrole = \"app\"\ntier = \"gold\"\n\
         [[collect.redis]]\naddress = \"{}\"\npassword_file = \"{}\"\n",
        redis.address(),
        password.display()
    );
    fleet.push("app", "{role=\"app\"}", &v2, &["--canary", "1", "--wave-size", "1", "--wait", "20s"]);
    let rollout = |state: &str| {
        wait_for(Duration::from_secs(40), || {
            let (_, body) = aggregator.get("/api/v1/configs/rollouts").unwrap();
            let json: Json = serde_json::from_str(&body).unwrap();
            json["data"].as_array().and_then(|r| r.last().cloned()).filter(|r| r["state"] == state)
        })
        .unwrap_or_else(|| {
            panic!("the rollout is not {state}: {}", aggregator.get("/api/v1/configs/rollouts").unwrap().1)
        })
    };
    let halted = rollout("halted");
    let canary = halted["agents"][0].as_str().unwrap().to_owned();
    assert!(halted["reason"].as_str().unwrap().contains("late.pw"), "{halted}");
    let failures = wait_for(Duration::from_secs(10), || {
        agent_metric(aggregator, &format!("herd_agent_config_apply_failures_total{{instance=\"{canary}\"}}"))
            .filter(|v| *v >= 1.0)
    });
    assert_eq!(failures, Some(1.0), "the canary counts its refusal");
    for name in names.iter().filter(|n| **n != canary) {
        assert_eq!(fleet.status(name)["appliedVersion"], 1, "{name} is held on version 1");
    }

    // The operator puts the file in place and resumes: the other waves go through.
    secret_file(&password, PASSWORD);
    let (ok, text) = fleet.config(true, &["resume", "app"]);
    assert!(ok, "{text}");
    let done = rollout("done");
    assert_eq!(done["released"], 4, "{done}");
    for name in names.iter().filter(|n| **n != canary) {
        let status = fleet.wait_state(name, "applied", 2);
        assert_eq!(status["appliedVersion"], 2, "{status}");
        assert!(status["collectors"].as_array().unwrap().iter().all(|c| c["ok"] == true), "{status}");
        assert!(wait_series(
            aggregator,
            &format!("redis_up{{instance=\"{name}\",tier=\"gold\"}} == 1"),
            Duration::from_secs(10)
        ));
        // The label set changed: the series without the label ended with a staleness marker.
        assert!(
            ends_at_once(aggregator, &format!("node_load1{{instance=\"{name}\",tier=\"\"}}")),
            "{name}'s old series is still there"
        );
        assert!(wait_series(
            aggregator,
            &format!("node_load1{{instance=\"{name}\",tier=\"gold\"}}"),
            Duration::from_secs(5)
        ));
    }

    // Rollback to version 1: re-applied on every agent that ran version 2.
    let (ok, text) = fleet.config(true, &["rollback", "app", "--to", "1"]);
    assert!(ok && text.contains("back on version 1"), "{text}");
    for name in &names {
        let status = fleet.wait_state(name, "applied", 1);
        assert_eq!(status["appliedVersion"], 1, "{status}");
        let reported = wait_for(Duration::from_secs(10), || {
            (agent_metric(aggregator, &format!("herd_agent_config_version{{instance=\"{name}\"}}")) == Some(1.0))
                .then_some(())
        });
        assert!(reported.is_some(), "{name} does not report version 1 again");
    }
    assert!(ends_at_once(aggregator, "node_load1{tier=\"gold\"}"), "the label is gone with version 2");
    assert!(ends_at_once(aggregator, "redis_up"), "so is the Redis collector");
    for name in &names {
        assert!(wait_series(
            aggregator,
            &format!("node_load1{{instance=\"{name}\",tier=\"\"}}"),
            Duration::from_secs(5)
        ));
    }
    drop(agents);
}
