//! The programs live in `main.rs` (built for bpfel-unknown-none by claude-watch's build.rs);
//! this empty library lets user space declare the crate as a build dependency.
#![no_std]
