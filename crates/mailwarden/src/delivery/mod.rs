//! Delivery: local Maildir now; outbound SMTP joins it here.

pub mod maildir;
