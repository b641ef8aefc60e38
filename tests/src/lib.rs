//! Test harness.
pub mod testbed;
