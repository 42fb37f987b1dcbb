//! Dynamic secrets: database credentials and PKI certificates with leases.

mod db;
mod db_replicas;
mod pki;
mod pki_issuers;
