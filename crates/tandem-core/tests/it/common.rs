//! Shared helpers: pair and cluster configurations and output filters.

use std::time::Duration;
use tandem_core::sim::Sim;
use tandem_core::{ConfiguredRole, Coordination, Event, NodeConfig, Output};

/// A cluster of `names`: the first primary, the others secondaries in
/// falling priority (200, 190, ...), each a peer of every other.
pub fn ranked_configs(
    names: &[&str],
    coordination: Coordination,
    preempt: bool,
) -> Vec<NodeConfig> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let peers: Vec<&str> = names.iter().copied().filter(|n| n != name).collect();
            let role = if i == 0 {
                ConfiguredRole::Primary
            } else {
                ConfiguredRole::Secondary
            };
            let mut c = NodeConfig::new(name, role, 200 - i as u8 * 10, &peers);
            c.coordination = coordination;
            c.preempt = preempt;
            c
        })
        .collect()
}

/// The seeds' pair: `a` primary (priority 200), `b` secondary (100).
pub fn pair_configs() -> Vec<NodeConfig> {
    vec![
        NodeConfig::new("a", ConfiguredRole::Primary, 200, &["b"]),
        NodeConfig::new("b", ConfiguredRole::Secondary, 100, &["a"]),
    ]
}

/// A pair, run until it has settled (a active, b standby).
pub fn settled_pair(configs: Vec<NodeConfig>) -> Sim {
    let mut sim = Sim::new(configs, 7).expect("start the pair");
    sim.run_for(Duration::from_secs(2));
    sim
}

/// The events among some outputs.
pub fn events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// The outputs that are not sends (what the agent does locally).
pub fn actions(out: &[Output]) -> Vec<Output> {
    out.iter()
        .filter(|o| !matches!(o, Output::Send { .. }))
        .cloned()
        .collect()
}
