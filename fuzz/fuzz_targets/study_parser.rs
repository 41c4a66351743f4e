//! libFuzzer over the study parser: `lem_fuzzing::study_parser` plans the input as
//! a study file, as `lem-coord` and the coordinator's `submit` do.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lem_fuzzing::study_parser(data);
});
