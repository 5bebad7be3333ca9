//! Congestion control for chunk transfers: CUBIC on a LAN, BBR between homes.
//!
//! CUBIC fills a LAN or loopback link best, but a path with a long round trip and random
//! loss (a home's uplink) makes it halve its window on every loss and crawl: at 100 ms ±
//! 20 ms with 2% loss a 4 MB transfer took a minute. BBR keeps its rate through random loss
//! (5 s for the same transfer) but, on a sub-millisecond path, sizes its window from that
//! tiny round trip and halves loopback throughput. [`Adaptive`] feeds every event to both
//! and lets the one that suits the path decide the window, by the lowest round trip seen.
//! That lowest round trip only ever falls, so once a path shows itself a LAN, BBR is no
//! longer fed (it would cost CPU on every acknowledgement for nothing).

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// Paths whose lowest round trip is at least this are treated as links between homes.
pub const WAN_RTT: Duration = Duration::from_millis(8);

/// Builds an [`Adaptive`] controller per connection.
#[derive(Debug, Default)]
pub struct AdaptiveConfig;

/// The initial window of RFC 9002 (section 7.2) for datagrams of `mtu` bytes: ten
/// datagrams, but no more than 14,720 bytes or two datagrams, whichever is larger. (quinn's
/// configurations default to a fixed 14,720 bytes, which is less than one datagram on
/// loopback, where a connection would then never send.)
pub fn initial_window(mtu: u16) -> u64 {
    let mtu = u64::from(mtu);
    (10 * mtu).min(14_720.max(2 * mtu))
}

impl ControllerFactory for AdaptiveConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let window = initial_window(current_mtu);
        let mut cubic = CubicConfig::default();
        cubic.initial_window(window);
        let mut bbr = BbrConfig::default();
        bbr.initial_window(window);
        Box::new(Adaptive {
            cubic: Arc::new(cubic).build(now, current_mtu),
            bbr: Arc::new(bbr).build(now, current_mtu),
            min_rtt: None,
        })
    }
}

/// CUBIC and BBR side by side; the window is BBR's once the path's lowest round trip is
/// [`WAN_RTT`] or more, CUBIC's before that.
pub struct Adaptive {
    cubic: Box<dyn Controller>,
    bbr: Box<dyn Controller>,
    min_rtt: Option<Duration>,
}

impl Adaptive {
    fn wan(&self) -> bool {
        self.min_rtt.is_some_and(|r| r >= WAN_RTT)
    }

    /// Known to be a LAN path for good (the lowest round trip never rises).
    fn lan(&self) -> bool {
        self.min_rtt.is_some_and(|r| r < WAN_RTT)
    }

    fn active(&self) -> &dyn Controller {
        if self.wan() { self.bbr.as_ref() } else { self.cubic.as_ref() }
    }
}

impl Controller for Adaptive {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
        if !self.lan() {
            self.bbr.on_sent(now, bytes, last_packet_number);
        }
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.min_rtt = Some(rtt.min());
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
        if !self.lan() {
            self.bbr.on_ack(now, sent, bytes, app_limited, rtt);
        }
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_packet_num_acked: Option<u64>) {
        self.cubic.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        if !self.lan() {
            self.bbr.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        }
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.cubic.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        if !self.lan() {
            self.bbr.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.cubic.on_mtu_update(new_mtu);
        self.bbr.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.active().window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.active().metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Adaptive {
            cubic: self.cubic.clone_box(),
            bbr: self.bbr.clone_box(),
            min_rtt: self.min_rtt,
        })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_decides_until_the_path_proves_long_then_bbr_does() {
        let now = Instant::now();
        let cubic = Arc::new(CubicConfig::default()).build(now, 1200).window();
        let mut a = Adaptive {
            cubic: Arc::new(CubicConfig::default()).build(now, 1200),
            bbr: Arc::new(BbrConfig::default()).build(now, 1200),
            min_rtt: None,
        };
        assert_eq!(a.window(), cubic, "before any round trip is known");
        a.min_rtt = Some(Duration::from_millis(200));
        assert!(a.wan() && !a.lan(), "a round trip between homes");
        assert_eq!(a.window(), a.bbr.window());
        // While the path may still prove long, every event reaches both, so the one taking
        // over is already warm.
        a.on_congestion_event(now, now, false, 1200);
        assert!(a.cubic.window() < cubic, "CUBIC saw the loss too");
        assert_eq!(a.clone_box().window(), a.window());
        a.min_rtt = Some(Duration::from_micros(300));
        assert!(a.lan() && !a.wan(), "a LAN round trip");
        assert_eq!(a.window(), a.cubic.window());
    }

    #[test]
    fn the_initial_window_always_holds_at_least_two_datagrams() {
        assert_eq!(initial_window(1200), 12_000);
        assert_eq!(initial_window(1452), 14_520);
        assert_eq!(initial_window(8952), 17_904);
        assert_eq!(initial_window(65_507), 131_014);
        let c = Arc::new(AdaptiveConfig).build(Instant::now(), 65_507);
        assert!(c.window() >= 2 * 65_507, "a loopback connection can send from the start");
    }
}
