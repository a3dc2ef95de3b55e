//! Placeholder; filled by the bump issue.
