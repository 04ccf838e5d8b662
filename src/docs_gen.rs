//! Man pages and shell completions, generated from the command line's own definition so they
//! never disagree with `--help`: `mirrorswarm man --out DIR` (one page per command,
//! `mirrorswarm.1` and `mirrorswarm-<command>.1`), `mirrorswarm completions SHELL` (bash,
//! zsh, fish, on stdout). The Debian package ships both.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Write `mirrorswarm.1` and one page per subcommand (and sub-subcommand) into `dir`.
pub fn man_pages<C: CommandFactory>(dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let root = C::command();
    write_page(&root, "mirrorswarm", dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<String>,
) -> Result<()> {
    // A subcommand's page is named and titled by its whole path (`mirrorswarm-prsync-pull`),
    // as git's are.
    let cmd = cmd.clone().name(name.to_string());
    let file = format!("{name}.1");
    let mut bytes = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut bytes)
        .with_context(|| format!("rendering {file}"))?;
    let path = dir.join(&file);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    written.push(file);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

/// The completion script for `shell`, on stdout.
pub fn completions<C: CommandFactory>(shell: clap_complete::Shell) {
    let mut cmd = C::command();
    clap_complete::generate(shell, &mut cmd, "mirrorswarm", &mut std::io::stdout());
}
