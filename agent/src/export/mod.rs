//! Exporters: how the agent's numbers leave the node.

pub mod prometheus;
