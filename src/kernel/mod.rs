//! One module per kernel object: pins on bpffs, loading (and upgrading,
//! and migrating) the programs and maps, attaching them to interfaces and
//! cgroups, and finding them again when the pins are lost.

pub mod attach;
pub mod cgroup;
pub mod loader;
pub mod migrate;
pub mod owner;
pub mod pins;
pub mod recover;
