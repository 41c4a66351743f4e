//! libFuzzer over the RPC frame decoder: `lem_fuzzing::rpc_frame` decodes the input
//! as bytes off a socket, as the coordinator's and a worker's transports do.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lem_fuzzing::rpc_frame(data);
});
