//! The Wasm runtime: one engine, the `channel-plugin` bindings, the store
//! state every instance gets (memory cap, WASI context with no filesystem,
//! env or inherited stdio, stdout/stderr to `tracing`), the epoch ticker,
//! and loading a component file into a validated, pre-instantiated plugin.

//!
//! One name for what `bindings`, `engine`, `sandbox` and `loader` provide.

pub use super::bindings::*;
pub use super::engine::*;
pub use super::loader::*;
pub use super::sandbox::*;
