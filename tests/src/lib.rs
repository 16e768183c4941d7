//! The project's own test helpers: the public test kit
//! (`switchboard-testkit`), re-exported, so every test says
//! `use switchboard_tests::*`.

pub use switchboard_testkit::*;
