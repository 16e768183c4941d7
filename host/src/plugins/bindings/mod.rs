//! The generated bindings, one module per contract version (the way Zed's
//! `extension_host` keeps one module per extension API version): a `0.2`
//! module sits next to `v0_1` when the contract changes.

pub mod v0_1;

pub use v0_1::*;
