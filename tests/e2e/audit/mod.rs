//! The audit trail: records, tamper evidence, a full disk, floods, HMAC keys.

mod disk_full;
mod flood;
mod hmac;
mod trail;
