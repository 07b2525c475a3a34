//! A container's network counters from `/proc/<pid>/net/dev` of its main
//! process, which shows the container's network namespace. Parsing only.

/// The columns cAdvisor reports, per interface.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InterfaceCounters {
    pub(crate) interface: String,
    pub(crate) receive_bytes: f64,
    pub(crate) receive_packets: f64,
    pub(crate) receive_errors: f64,
    pub(crate) transmit_bytes: f64,
    pub(crate) transmit_packets: f64,
    pub(crate) transmit_errors: f64,
}

/// Two header lines precede the interfaces.
const HEADER_LINES: usize = 2;
/// Counters after `<interface>:`.
const COLUMNS: usize = 16;

/// Every interface but loopback, which cAdvisor leaves out too. Malformed
/// lines are skipped: the file is the kernel's, and one odd line should not
/// cost the others.
pub(crate) fn parse(text: &str) -> Vec<InterfaceCounters> {
    let mut interfaces = Vec::new();
    for line in text.lines().skip(HEADER_LINES) {
        // Large counters run into the colon: "eth0:126934476 4485 ...".
        let Some((interface, counters)) = line.split_once(':') else { continue };
        let interface = interface.trim();
        if interface == "lo" {
            continue;
        }
        let mut values = [0f64; COLUMNS];
        let mut count = 0;
        for (slot, field) in values.iter_mut().zip(counters.split_ascii_whitespace()) {
            let Ok(value) = field.parse::<u64>() else { break };
            *slot = value as f64;
            count += 1;
        }
        if count < COLUMNS {
            continue;
        }
        interfaces.push(InterfaceCounters {
            interface: interface.to_owned(),
            receive_bytes: values[0],
            receive_packets: values[1],
            receive_errors: values[2],
            transmit_bytes: values[8],
            transmit_packets: values[9],
            transmit_errors: values[10],
        });
    }
    interfaces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_malformed_lines_are_left_out() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n    \
            lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
            eth0:126934476 4485 2 0 0 0 0 0 9876 54 1 0 0 0 0 0\n  \
            eth1: 1 2 3\n";
        assert_eq!(
            parse(text),
            vec![InterfaceCounters {
                interface: "eth0".into(),
                receive_bytes: 126934476.0,
                receive_packets: 4485.0,
                receive_errors: 2.0,
                transmit_bytes: 9876.0,
                transmit_packets: 54.0,
                transmit_errors: 1.0,
            }]
        );
    }
}
