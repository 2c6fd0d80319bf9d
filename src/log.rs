//! Structured logging: one line per protocol call; bodies at debug level.

use std::str::FromStr;

use slog::{Drain, Level, Logger, o};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!("log format {other:?}: expected text or json")),
        }
    }
}

pub fn parse_level(s: &str) -> Result<Level, String> {
    Level::from_str(s).map_err(|_| format!("log level {s:?}: expected error, warn, info, debug or trace"))
}

/// Logs go to stdout: dockerd copies a managed plugin's stdout into its own log
/// at level info (stderr would show every line as level=error).
pub fn build(level: Level, format: Format) -> Logger {
    let drain = match format {
        Format::Text => {
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stdout());
            slog_term::FullFormat::new(decorator).build().fuse().ignore_res().boxed_drain()
        }
        Format::Json => slog_json::Json::default(std::io::stdout()).fuse().ignore_res().boxed_drain(),
    };
    let drain = slog_async::Async::new(drain.filter_level(level).fuse()).chan_size(4096).build().fuse();
    Logger::root(drain, o!())
}

trait BoxedDrain {
    fn boxed_drain(self) -> Box<dyn Drain<Ok = (), Err = slog::Never> + Send>;
}

impl<D: Drain<Ok = (), Err = slog::Never> + Send + 'static> BoxedDrain for D {
    fn boxed_drain(self) -> Box<dyn Drain<Ok = (), Err = slog::Never> + Send> {
        Box::new(self)
    }
}
