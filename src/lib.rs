//! asap-proxy: an HTTP proxy that adds an ASAP bearer token to every routed request.
//!
//! The binary is a thin wrapper over [`cli::main`]; the pieces a request passes through are
//! [`server`] (listeners), [`proxy`] (the pipeline), [`routes`] (matching), [`token`]
//! (minting) and [`upstream`] (the pooled client), all driven by a checked [`config`].

pub mod cli;
pub mod clients;
pub mod config;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod upstream;
