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
pub struct AdaptiveConfig {
    cubic: Arc<CubicConfig>,
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for AdaptiveConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Adaptive {
            cubic: self.cubic.clone().build(now, current_mtu),
            bbr: self.bbr.clone().build(now, current_mtu),
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
}
