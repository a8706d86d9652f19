//! What the driver shows of itself: the `/v1/status` report and the
//! Prometheus text of `/metrics`.
//!
//! Both are read-only snapshots of the [`Agent`] taken inside the loop (it
//! owns the state), so they live beside it; keeping them out of the loop's
//! file leaves that file about deciding and doing.

use super::Agent;
use crate::api;
use crate::upgrade;

impl Agent {
    /// This node's `/v1/status`.
    pub(super) fn report(&self) -> api::StatusReport {
        let now = self.clock.now();
        let vip_bound = self
            .vip
            .values()
            .flatten()
            .map(|(a, _)| a.to_string())
            .collect();
        api::StatusReport {
            node: self.node.status(now),
            agent: api::AgentReport {
                pid: std::process::id(),
                epoch: self.saved.epoch,
                uptime_ms: now.0,
                api: self.config.node.api,
                config: self.config.origin.clone(),
                vip_bound,
                service_running: self.service_running,
                listener: if self.listener_suspended {
                    api::ListenerState::Suspended
                } else {
                    api::ListenerState::Open
                },
                allow_unsigned: self.config.images.allow_unsigned,
                config_link: upgrade::config_link(&self.config.node.state_dir),
                service_pid: self.service_pid,
                service_starts: self.counters.service_starts,
                service_crashes: self.counters.service_crashes,
                peer_connections_closed: self.counters.peer_connections_closed,
            },
            sync: self.replication.status(),
        }
    }

    /// The Prometheus text of `/metrics`.
    pub(super) fn metrics(&self) -> String {
        let status = self.node.status(self.clock.now());
        let node = &self.config.node.name;
        let mut out = String::new();
        let mut metric = |help: &str, kind: &str, name: &str, samples: Vec<(String, String)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{{node=\"{node}\"{labels}}} {value}\n"));
            }
        };
        let role = status.effective_role.to_string();
        metric(
            "Effective role of this node (1 for the current one).",
            "gauge",
            "tandem_role",
            [
                "active",
                "standby",
                "held-off",
                "failed",
                "off",
                "syncing",
                "disconnected",
            ]
            .iter()
            .map(|r| (format!(",role=\"{r}\""), u8::from(role == *r).to_string()))
            .collect(),
        );
        metric(
            "Role transitions since start.",
            "counter",
            "tandem_role_transitions_total",
            vec![(String::new(), status.counters.transitions.to_string())],
        );
        metric(
            "Heartbeats sent.",
            "counter",
            "tandem_heartbeats_sent_total",
            vec![(String::new(), status.counters.heartbeats_sent.to_string())],
        );
        metric(
            "Heartbeats received and accepted.",
            "counter",
            "tandem_heartbeats_received_total",
            vec![(
                String::new(),
                status.counters.heartbeats_received.to_string(),
            )],
        );
        metric(
            "Datagrams rejected, by reason.",
            "counter",
            "tandem_heartbeats_rejected_total",
            status
                .counters
                .rejected
                .iter()
                .map(|(reason, n)| {
                    (
                        format!(",reason=\"{}\"", reason_label(*reason)),
                        n.to_string(),
                    )
                })
                .collect(),
        );
        metric(
            "Split-brain events resolved.",
            "counter",
            "tandem_split_brain_events_total",
            vec![(
                String::new(),
                status.counters.split_brain_events.to_string(),
            )],
        );
        metric(
            "Whether each peer is alive.",
            "gauge",
            "tandem_peer_up",
            status
                .peers
                .iter()
                .map(|p| {
                    (
                        format!(",peer=\"{}\"", p.name),
                        u8::from(p.alive).to_string(),
                    )
                })
                .collect(),
        );
        metric(
            "Service starts.",
            "counter",
            "tandem_service_starts_total",
            vec![(String::new(), self.counters.service_starts.to_string())],
        );
        metric(
            "Service crashes.",
            "counter",
            "tandem_service_crashes_total",
            vec![(String::new(), self.counters.service_crashes.to_string())],
        );
        metric(
            "A peer heard on the sync channel whose heartbeats fail the MAC: different cluster keys (1 while it lasts).",
            "gauge",
            "tandem_key_mismatch",
            status
                .peers
                .iter()
                .map(|p| {
                    let mismatch = status.key_mismatch.as_deref() == Some(p.name.as_str());
                    (
                        format!(",peer=\"{}\"", p.name),
                        u8::from(mismatch).to_string(),
                    )
                })
                .collect(),
        );
        for (name, help, value) in [
            (
                "tandem_self_fenced_total",
                "Times this node stood down for etcd (its session ran out, or the leader key moved).",
                status.counters.self_fenced,
            ),
            (
                "tandem_stale_epochs_total",
                "Active claims and etcd answers ignored for an older fencing epoch.",
                status.counters.stale_epochs,
            ),
            (
                "tandem_stale_writes_total",
                "API writes from other agents refused for an older fencing epoch.",
                self.fencing.stale_writes(),
            ),
        ] {
            metric(
                help,
                "counter",
                name,
                vec![(String::new(), value.to_string())],
            );
        }
        for (name, kind, help, value) in self.replication.metrics() {
            metric(help, kind, name, vec![(String::new(), value.to_string())]);
        }
        out
    }
}

fn reason_label(reason: tandem_core::wire::RejectReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{reason:?}"))
}
