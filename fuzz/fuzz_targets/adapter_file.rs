#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| candle_swag_fuzz::adapter_file(data));
