//! One module per kernel object: pins on bpffs, loading (and upgrading)
//! the programs and maps, attaching them.

pub mod attach;
pub mod loader;
pub mod pins;
