//! asap-proxy: an HTTP proxy that adds an ASAP bearer token to every routed request.
//!
//! The binary is a thin wrapper over [`cli::main`]. A request passes through [`server`]
//! (listeners and connection limits), [`proxy`] (the pipeline: [`clients`] admission,
//! [`routes`] matching, [`token`] minting, forwarding), [`destination`] (where the proxy may
//! connect) and [`upstream`] (the pooled client), all driven by a checked [`config`];
//! [`admin`] and [`metrics`] are the operators' view.

pub mod admin;
pub mod cli;
pub mod clients;
pub mod config;
pub mod destination;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod upstream;
