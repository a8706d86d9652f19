//! tandem-upgrade's tests, one binary.

// Fixtures and the simulated cluster.
mod support;
// Each strategy's plan, step by step, against the seeds' procedures.
mod strategies;
// Refusals: every PlanError a caller can meet.
mod refusals;
// The step machine: resume, abort, rollback, exact actions.
mod run;
// Properties over random clusters, crashes and failures.
mod props;
