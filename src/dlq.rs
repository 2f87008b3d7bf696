//! `engine dlq list|show|replay`: the dead letters of a Redis stream.

use std::process::ExitCode;

use clap::Subcommand;

/// `engine dlq ...`: the dead-letter stream of `redis://host:port/<stream>` (`{<stream>}:dead`,
/// or the address's `dead=`); of a keyed stream (`?partitions=<P>`, also on a cluster,
/// `redis+cluster://...`), those of each of its partitions (`{<stream>:p<i>}:dead`).
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List the dead letters, oldest first: id, original id, deliveries, reason.
    List {
        /// The stream: `redis://host:port/<stream>`.
        #[arg(value_name = "URL", value_parser = crate::run::parse_stream_address)]
        address: Box<engine::redis::StreamAddress>,
    },
    /// Show one dead letter in full, with its line.
    Show {
        /// The dead letter's id (the first column of `list`).
        id: engine::redis::EntryId,
        /// The stream: `redis://host:port/<stream>`.
        #[arg(value_name = "URL", value_parser = crate::run::parse_stream_address)]
        address: Box<engine::redis::StreamAddress>,
    },
    /// Move dead letters back to the stream, as new entries, for another try:
    /// `replay --all URL` or `replay ID... URL`.
    Replay {
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// The dead letters' ids (the first column of `list`), unless `--all`, then the
        /// stream: `redis://host:port/<stream>`.
        #[arg(value_name = "ID... URL", required = true, num_args = 1..)]
        targets: Vec<String>,
    },
}

/// `engine dlq list|show|replay`: a thin layer over [`engine::redis::DeadLetters`]. Lists
/// and answers go to standard output, counts to standard error; 1 when an id is not found.
pub(crate) fn dlq(command: &DlqCommand) -> anyhow::Result<ExitCode> {
    use engine::redis::DeadLetters;
    match command {
        DlqCommand::List { address } => {
            let each = DeadLetters::connect_each(address)?;
            let several = each.len() > 1;
            let mut total = 0;
            for mut letters in each {
                let list = letters.list()?;
                for letter in &list {
                    let original = letter
                        .original_id
                        .map_or_else(|| "-".to_owned(), |id| id.to_string());
                    let deliveries = letter
                        .deliveries
                        .map_or_else(|| "-".to_owned(), |n| n.to_string());
                    println!(
                        "{}\t{original}\tdeliveries={deliveries}\t{}",
                        letter.id, letter.reason
                    );
                }
                // A keyed stream's partitions: only those with dead letters are counted.
                if !several || !list.is_empty() {
                    eprintln!(
                        "{} dead letters in {}",
                        list.len(),
                        letters.dead_letter_stream()
                    );
                }
                total += list.len();
            }
            if several {
                eprintln!(
                    "{total} dead letters in the partitions of {}",
                    address.stream()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, address } => {
            let mut found = None;
            let mut searched = Vec::new();
            for mut letters in DeadLetters::connect_each(address)? {
                if let Some(letter) = letters.get(*id)? {
                    found = Some(letter);
                    break;
                }
                searched.push(letters.dead_letter_stream().to_owned());
            }
            let Some(letter) = found else {
                eprintln!("error: no dead letter {id} in {}", searched.join(", "));
                return Ok(ExitCode::FAILURE);
            };
            let or_dash = |text: Option<String>| text.unwrap_or_else(|| "-".to_owned());
            println!("id: {}", letter.id);
            println!("stream: {}", or_dash(letter.stream.clone()));
            println!(
                "original id: {}",
                or_dash(letter.original_id.map(|id| id.to_string()))
            );
            println!(
                "deliveries: {}",
                or_dash(letter.deliveries.map(|n| n.to_string()))
            );
            println!("protocol version: {}", or_dash(letter.version.clone()));
            println!("reason: {}", letter.reason);
            match &letter.payload {
                None => println!("line: - (no item)"),
                Some(bytes) => match engine::core::protocol::from_bytes::<String>(bytes) {
                    Ok(line) => println!("line: {line:?}"),
                    Err(_) => {
                        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                        println!("item: {} bytes, not a line: {hex}", bytes.len());
                    }
                },
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { all, targets } => {
            let Some((url, ids)) = targets.split_last() else {
                unreachable!("clap requires one value at least");
            };
            let usage = |message: String| {
                eprintln!("error: {message}");
                Ok(ExitCode::from(2))
            };
            let address = match crate::run::parse_stream_address(url) {
                Ok(address) => address,
                Err(err) => return usage(err),
            };
            let ids = match ids
                .iter()
                .map(|id| {
                    id.parse::<engine::redis::EntryId>()
                        .map_err(|e| format!("{id:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(ids) => ids,
                Err(err) => return usage(err),
            };
            match (*all, ids.is_empty()) {
                (true, false) => return usage("give --all or ids, not both".to_owned()),
                (false, true) => return usage("give the ids to replay, or --all".to_owned()),
                _ => {}
            }
            // A keyed stream's partitions each: an id is looked for in each partition's
            // dead letters until found (ids of two partitions' dead-letter streams could be
            // equal only if written in one millisecond on two servers, then the first wins).
            let mut replayed = Vec::new();
            for mut letters in DeadLetters::connect_each(&address)? {
                let moved = if *all {
                    letters.replay_all()?
                } else {
                    let left: Vec<engine::redis::EntryId> = ids
                        .iter()
                        .filter(|id| {
                            !replayed
                                .iter()
                                .any(|r: &engine::redis::Replayed| r.dead == **id)
                        })
                        .copied()
                        .collect();
                    if left.is_empty() {
                        break;
                    }
                    letters.replay(&left)?
                };
                for r in &moved {
                    println!("{} -> {}", r.dead, r.new);
                }
                if !moved.is_empty() || !*all || address.partitions().is_none() {
                    eprintln!(
                        "replayed {} dead letters from {} to {}",
                        moved.len(),
                        letters.dead_letter_stream(),
                        letters.stream()
                    );
                }
                replayed.extend(moved);
            }
            if address.partitions().is_some() {
                eprintln!(
                    "replayed {} dead letters to the partitions of {}",
                    replayed.len(),
                    address.stream()
                );
            }
            let missing: Vec<String> = ids
                .iter()
                .filter(|id| !replayed.iter().any(|moved| moved.dead == **id))
                .map(ToString::to_string)
                .collect();
            if missing.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "error: not replayed (no such dead letter, or no item in it): {}",
                    missing.join(", ")
                );
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
