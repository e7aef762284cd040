//! End-to-end tests (tier 3 in docs/testing.md): the real `mailwarden` binary on 127.0.0.1
//! port 0, driven by real clients: Python smtplib, a raw scripted Python client, swaks, curl.

mod classifier;
mod cli;
mod cluster;
mod console;
mod containment;
mod crash;
mod hostile;
mod japanese;
mod learning;
mod limits;
mod mx;
mod outbound;
mod ownership;
mod pop3;
mod records;
mod reports;
mod reputation;
mod screening;
mod sender_auth;
mod submission;
mod support;
mod verified_tls;
