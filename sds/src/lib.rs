//! Placeholder; filled by the SDS issue.
