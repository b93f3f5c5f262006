//! What the commands write for a person at a terminal.

/// Prints `text` and a newline on stdout. A reader that stopped reading
/// (`| head`) ends the output quietly: a closed pipe is not an error here,
/// where `println!` would panic with a backtrace.
pub fn print_text(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("cannot write the output: {e}");
        }
    }
}
