//! A UDP relay that drops, delays and reorders datagrams, standing in for a
//! bad network link (the kernel here has no netem). One client at a time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the link misbehaves, in both directions.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Probability of dropping a datagram.
    pub loss: f64,
    /// Each datagram is delayed uniformly within this range, which reorders them.
    pub min_delay: Duration,
    pub max_delay: Duration,
}

pub struct LossyRelay {
    /// Where the client should send.
    pub addr: SocketAddr,
    pub dropped: Arc<AtomicU64>,
    pub forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

type Due = (Reverse<Instant>, u64, Vec<u8>, bool);

impl LossyRelay {
    pub fn start(target: SocketAddr, impairment: Impairment) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind relay front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind relay back");
        back.connect(target).expect("connect relay back");
        for socket in [&front, &back] {
            socket.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
        }
        let addr = front.local_addr().expect("relay address");
        let front = Arc::new(front);
        let back = Arc::new(back);
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (schedule, due) = mpsc::channel::<(Vec<u8>, bool)>();
        let mut threads = Vec::new();

        // Receivers: client → target (`true`) and target → client (`false`).
        for to_target in [true, false] {
            let (front, back, client, stop, schedule) =
                (Arc::clone(&front), Arc::clone(&back), Arc::clone(&client), Arc::clone(&stop), schedule.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let received = if to_target {
                        front.recv_from(&mut buf).map(|(n, from)| {
                            *client.lock().expect("relay lock") = Some(from);
                            n
                        })
                    } else {
                        back.recv(&mut buf)
                    };
                    if let Ok(n) = received
                        && schedule.send((buf[..n].to_vec(), to_target)).is_err()
                    {
                        return;
                    }
                }
            }));
        }
        drop(schedule);

        // The link: drop some, hold the rest for a random delay, deliver when due.
        let (stop_link, dropped_link, forwarded_link) =
            (Arc::clone(&stop), Arc::clone(&dropped), Arc::clone(&forwarded));
        threads.push(std::thread::spawn(move || {
            let mut queue: BinaryHeap<Due> = BinaryHeap::new();
            let mut order = 0u64;
            let mut rng = fastrand::Rng::with_seed(7);
            while !stop_link.load(Ordering::Relaxed) {
                let wait = queue.peek().map_or(Duration::from_millis(20), |(Reverse(at), ..)| {
                    at.saturating_duration_since(Instant::now()).min(Duration::from_millis(20))
                });
                match due.recv_timeout(wait) {
                    Ok((bytes, to_target)) => {
                        if rng.f64() < impairment.loss {
                            dropped_link.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let span = impairment.max_delay.saturating_sub(impairment.min_delay);
                            let delay = impairment.min_delay + span.mul_f64(rng.f64());
                            order += 1;
                            queue.push((Reverse(Instant::now() + delay), order, bytes, to_target));
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let now = Instant::now();
                while queue.peek().is_some_and(|(Reverse(at), ..)| *at <= now) {
                    let (_, _, bytes, to_target) = queue.pop().expect("peeked");
                    let sent = if to_target {
                        back.send(&bytes).is_ok()
                    } else {
                        match *client.lock().expect("relay lock") {
                            Some(client) => front.send_to(&bytes, client).is_ok(),
                            None => false,
                        }
                    };
                    if sent {
                        forwarded_link.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
        Self { addr, dropped, forwarded, stop, threads }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
