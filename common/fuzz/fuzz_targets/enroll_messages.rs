//! Arbitrary bytes as the enrollment and renewal messages the aggregator
//! reads from agents that have not proven anything yet: the length prefix is
//! checked before anything is allocated, decoding never panics, and a
//! decoded message survives encoding and decoding again. Also the certificate
//! parser Herd runs on what peers present (`identity::cert_info`).
#![no_main]

use herd_common::identity;
use herd_common::protocol::enroll::{self, EnrollRequest, LENGTH_PREFIX_BYTES, MAX_MESSAGE_BYTES, RenewRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Some(prefix) = bytes.get(..LENGTH_PREFIX_BYTES) {
        let prefix: [u8; LENGTH_PREFIX_BYTES] = prefix.try_into().expect("four bytes");
        if let Ok(length) = enroll::message_length(prefix) {
            assert!(length <= MAX_MESSAGE_BYTES);
        }
    }
    if let Ok(request) = enroll::decode::<EnrollRequest>(bytes) {
        let encoded = enroll::encode("enroll request", &request).expect("a decoded request encodes");
        assert_eq!(enroll::decode::<EnrollRequest>(&encoded[LENGTH_PREFIX_BYTES..]).ok(), Some(request));
    }
    if let Ok(request) = enroll::decode::<RenewRequest>(bytes) {
        let encoded = enroll::encode("renew request", &request).expect("a decoded request encodes");
        assert_eq!(enroll::decode::<RenewRequest>(&encoded[LENGTH_PREFIX_BYTES..]).ok(), Some(request));
    }
    let _ = identity::cert_info(bytes);
});
