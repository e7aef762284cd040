//! `mailwarden store copy`.
