//! Why the protocol core refused a command on its own: one typed reason per refusal, so the
//! server never recovers a reason from text. [`Why::text`] is what the log says; [`Why::slug`]
//! is the stable part of the reason code the server records (`<verb>.<slug>`).

/// A refusal the session decided by itself, or [`Why::Policy`] for the server's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Why {
    /// The server's policy refused (an answer to `mail_decision`, `rcpt_decision`,
    /// `auth_failed`): the server knows its reason.
    Policy,
    AuthLineTooLong,
    CommandLineTooLong,
    UnrecognizedCommand,
    NonSmtpCommand,
    CommandNotUtf8,
    SyntaxError,
    NonAsciiSender,
    BadSender,
    BadRecipient,
    UnsupportedParameter,
    MailBeforeHelo,
    NestedMail,
    MailWithoutAuth,
    TransactionLimit,
    DeclaredSizeOverLimit,
    RcptBeforeMail,
    RcptAfterBdat,
    NonAsciiRecipient,
    RecipientLimit,
    DataBeforeMail,
    DataAfterBdat,
    DataWithoutRecipients,
    StorageLow,
    BdatBeforeMail,
    BdatWithoutRecipients,
    BdatOverSizeLimit,
    StartTlsUnderTls,
    NoTlsConfigured,
    AuthNotOffered,
    AuthBeforeTls,
    AuthBeforeEhlo,
    SecondAuth,
    AuthInTransaction,
    UnknownMechanism,
    AuthzDiffers,
    AuthCancelled,
    MalformedAuthResponse,
    MessageOverSizeLimit,
    BareLineEnding,
    TextLineOverLimit,
}

impl Why {
    /// For people: the log line's reason.
    pub fn text(self) -> &'static str {
        match self {
            Why::Policy => "refused by policy",
            Why::AuthLineTooLong => "auth line too long",
            Why::CommandLineTooLong => "command line too long",
            Why::UnrecognizedCommand => "unrecognized command",
            Why::NonSmtpCommand => "non-SMTP command",
            Why::CommandNotUtf8 => "command not UTF-8",
            Why::SyntaxError => "syntax error",
            Why::NonAsciiSender => "non-ASCII sender without SMTPUTF8",
            Why::BadSender => "bad sender address syntax",
            Why::BadRecipient => "bad recipient address syntax",
            Why::UnsupportedParameter => "unsupported parameter",
            Why::MailBeforeHelo => "MAIL before HELO",
            Why::NestedMail => "nested MAIL",
            Why::MailWithoutAuth => "MAIL without AUTH",
            Why::TransactionLimit => "transaction limit",
            Why::DeclaredSizeOverLimit => "declared SIZE over limit",
            Why::RcptBeforeMail => "RCPT before MAIL",
            Why::RcptAfterBdat => "RCPT after BDAT",
            Why::NonAsciiRecipient => "non-ASCII recipient without SMTPUTF8",
            Why::RecipientLimit => "recipient limit",
            Why::DataBeforeMail => "DATA before MAIL",
            Why::DataAfterBdat => "DATA after BDAT",
            Why::DataWithoutRecipients => "DATA without recipients",
            Why::StorageLow => "storage low",
            Why::BdatBeforeMail => "BDAT before MAIL",
            Why::BdatWithoutRecipients => "BDAT without recipients",
            Why::BdatOverSizeLimit => "BDAT over size limit",
            Why::StartTlsUnderTls => "STARTTLS under TLS",
            Why::NoTlsConfigured => "no TLS configured",
            Why::AuthNotOffered => "AUTH on a port without AUTH",
            Why::AuthBeforeTls => "AUTH before TLS",
            Why::AuthBeforeEhlo => "AUTH before EHLO",
            Why::SecondAuth => "second AUTH",
            Why::AuthInTransaction => "AUTH inside a transaction",
            Why::UnknownMechanism => "unknown SASL mechanism",
            Why::AuthzDiffers => "authorization identity differs",
            Why::AuthCancelled => "AUTH cancelled",
            Why::MalformedAuthResponse => "malformed AUTH response",
            Why::MessageOverSizeLimit => "message over size limit",
            Why::BareLineEnding => "bare CR or LF in message",
            Why::TextLineOverLimit => "text line over limit",
        }
    }

    /// The stable code part, as records have always named it (the text, lowercased, with
    /// every other character an underscore). Fixed here, never computed from the text.
    pub fn slug(self) -> &'static str {
        match self {
            Why::Policy => "refused_by_policy",
            Why::AuthLineTooLong => "auth_line_too_long",
            Why::CommandLineTooLong => "command_line_too_long",
            Why::UnrecognizedCommand => "unrecognized_command",
            Why::NonSmtpCommand => "non_smtp_command",
            Why::CommandNotUtf8 => "command_not_utf_8",
            Why::SyntaxError => "syntax_error",
            Why::NonAsciiSender => "non_ascii_sender_without_smtputf8",
            Why::BadSender => "bad_sender_address_syntax",
            Why::BadRecipient => "bad_recipient_address_syntax",
            Why::UnsupportedParameter => "unsupported_parameter",
            Why::MailBeforeHelo => "mail_before_helo",
            Why::NestedMail => "nested_mail",
            Why::MailWithoutAuth => "mail_without_auth",
            Why::TransactionLimit => "transaction_limit",
            Why::DeclaredSizeOverLimit => "declared_size_over_limit",
            Why::RcptBeforeMail => "rcpt_before_mail",
            Why::RcptAfterBdat => "rcpt_after_bdat",
            Why::NonAsciiRecipient => "non_ascii_recipient_without_smtputf8",
            Why::RecipientLimit => "recipient_limit",
            Why::DataBeforeMail => "data_before_mail",
            Why::DataAfterBdat => "data_after_bdat",
            Why::DataWithoutRecipients => "data_without_recipients",
            Why::StorageLow => "storage_low",
            Why::BdatBeforeMail => "bdat_before_mail",
            Why::BdatWithoutRecipients => "bdat_without_recipients",
            Why::BdatOverSizeLimit => "bdat_over_size_limit",
            Why::StartTlsUnderTls => "starttls_under_tls",
            Why::NoTlsConfigured => "no_tls_configured",
            Why::AuthNotOffered => "auth_on_a_port_without_auth",
            Why::AuthBeforeTls => "auth_before_tls",
            Why::AuthBeforeEhlo => "auth_before_ehlo",
            Why::SecondAuth => "second_auth",
            Why::AuthInTransaction => "auth_inside_a_transaction",
            Why::UnknownMechanism => "unknown_sasl_mechanism",
            Why::AuthzDiffers => "authorization_identity_differs",
            Why::AuthCancelled => "auth_cancelled",
            Why::MalformedAuthResponse => "malformed_auth_response",
            Why::MessageOverSizeLimit => "message_over_size_limit",
            Why::BareLineEnding => "bare_cr_or_lf_in_message",
            Why::TextLineOverLimit => "text_line_over_limit",
        }
    }

    pub const ALL: [Why; 41] = [
        Why::Policy,
        Why::AuthLineTooLong,
        Why::CommandLineTooLong,
        Why::UnrecognizedCommand,
        Why::NonSmtpCommand,
        Why::CommandNotUtf8,
        Why::SyntaxError,
        Why::NonAsciiSender,
        Why::BadSender,
        Why::BadRecipient,
        Why::UnsupportedParameter,
        Why::MailBeforeHelo,
        Why::NestedMail,
        Why::MailWithoutAuth,
        Why::TransactionLimit,
        Why::DeclaredSizeOverLimit,
        Why::RcptBeforeMail,
        Why::RcptAfterBdat,
        Why::NonAsciiRecipient,
        Why::RecipientLimit,
        Why::DataBeforeMail,
        Why::DataAfterBdat,
        Why::DataWithoutRecipients,
        Why::StorageLow,
        Why::BdatBeforeMail,
        Why::BdatWithoutRecipients,
        Why::BdatOverSizeLimit,
        Why::StartTlsUnderTls,
        Why::NoTlsConfigured,
        Why::AuthNotOffered,
        Why::AuthBeforeTls,
        Why::AuthBeforeEhlo,
        Why::SecondAuth,
        Why::AuthInTransaction,
        Why::UnknownMechanism,
        Why::AuthzDiffers,
        Why::AuthCancelled,
        Why::MalformedAuthResponse,
        Why::MessageOverSizeLimit,
        Why::BareLineEnding,
        Why::TextLineOverLimit,
    ];
}

#[cfg(test)]
mod tests {
    use super::Why;

    /// The slugs are the codes records shipped with, when they were derived from the text:
    /// fixed now, they must still be what that derivation gave.
    #[test]
    fn slugs_are_the_codes_records_always_had() {
        for w in Why::ALL {
            let derived: String = w
                .text()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            assert_eq!(w.slug(), derived, "{w:?}");
        }
    }
}
