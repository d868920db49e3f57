//! datapath-cni: the CNI plugin. A runtime runs it with CNI_COMMAND and
//! the rest of the CNI environment set and the network configuration on
//! stdin; it prints a result or a CNI error object on stdout. `src/cni`
//! does the work (see the README for the configuration and error codes).

use std::io::Read;
use std::process::ExitCode;

use datapath::cni::plugin::{self, Invocation};

/// More than any network configuration (with a prevResult) needs.
const MAX_STDIN: u64 = 1 << 20;

fn main() -> ExitCode {
    // libbpf's own messages would only be noise in a runtime's logs;
    // every failure reaches the runtime as a CNI error object.
    libbpf_rs::set_print(None);
    let inv = Invocation::from_env();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin) {
        let err = datapath::cni::CniError::new(datapath::cni::code::IO_FAILURE, format!("reading stdin: {e}"));
        println!("{}", serde_json::to_string(&err).unwrap_or_default());
        return ExitCode::FAILURE;
    }
    let out = plugin::run(&inv, &stdin);
    if !out.stdout.is_empty() {
        println!("{}", out.stdout);
    }
    if out.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
