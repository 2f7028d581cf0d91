//! The endless service library.
