//! `cofferctl console`: the operator's web page, its reads and its session.

mod page;
mod reads;
mod session;
