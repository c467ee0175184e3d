//! Damped least-squares inverse kinematics for the end-effector position (Wampler
//! 1986; Buss, "Introduction to inverse kinematics with Jacobian transpose,
//! pseudoinverse and damped least squares methods", 2004, eq. 11):
//!
//! ```text
//! Δq = Jᵀ (J Jᵀ + λ² I)⁻¹ e
//! ```
//!
//! with J the 3 x n Jacobian of the tip link's position, e the position error and λ
//! the damping, which keeps steps bounded near singularities and out-of-reach goals
//! (where the plain pseudoinverse blows up). J comes from central differences of
//! the chain's forward kinematics; everything lives on the stack, so a step in the
//! tick allocates nothing.

use nalgebra::{Matrix3, Vector3};

use crate::robot_model::{KinematicChain, LinkId};
use crate::types::MAX_JOINTS;

/// Finite-difference step for the Jacobian, rad (or m for prismatic joints).
const JACOBIAN_STEP: f64 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DlsParams {
    /// λ, m: larger is steadier near singularities, slower to converge.
    pub damping: f64,
    /// The largest change of any joint in one step, rad.
    pub max_step: f64,
    /// Steps per call of [`DampedLeastSquares::solve`].
    pub iterations: usize,
}

impl Default for DlsParams {
    fn default() -> Self {
        Self {
            damping: 0.02,
            max_step: 0.05,
            iterations: 4,
        }
    }
}

/// Position IK for one link of a chain.
#[derive(Debug, Clone)]
pub struct DampedLeastSquares {
    chain: std::sync::Arc<KinematicChain>,
    tip: LinkId,
    params: DlsParams,
}

impl DampedLeastSquares {
    pub fn new(chain: std::sync::Arc<KinematicChain>, tip: LinkId, params: DlsParams) -> Self {
        Self { chain, tip, params }
    }

    /// Where the tip is at `q`.
    pub fn position(&self, q: &[f64]) -> Vector3<f64> {
        self.chain.link_position(q, self.tip)
    }

    /// The tip position's Jacobian at `q`: column j is ∂p/∂q_j (central differences).
    pub fn jacobian(&self, q: &[f64], out: &mut [Vector3<f64>; MAX_JOINTS]) {
        let n = self.chain.joints().min(q.len()).min(MAX_JOINTS);
        let mut probe = [0.0; MAX_JOINTS];
        probe[..n].copy_from_slice(&q[..n]);
        for j in 0..n {
            probe[j] = q[j] + JACOBIAN_STEP;
            let ahead = self.position(&probe[..n]);
            probe[j] = q[j] - JACOBIAN_STEP;
            let behind = self.position(&probe[..n]);
            probe[j] = q[j];
            out[j] = (ahead - behind) / (2.0 * JACOBIAN_STEP);
        }
    }

    /// Moves `q` toward putting the tip at `goal`, keeping each joint inside
    /// `limits`; returns the remaining distance, m. Non-finite input leaves `q`
    /// unchanged (and returns NaN).
    pub fn solve(&self, q: &mut [f64], goal: &Vector3<f64>, limits: &[[f64; 2]]) -> f64 {
        let n = self.chain.joints().min(q.len()).min(MAX_JOINTS);
        let mut jacobian = [Vector3::zeros(); MAX_JOINTS];
        let mut error = goal - self.position(&q[..n]);
        if !(error.iter().all(|e| e.is_finite()) && q[..n].iter().all(|v| v.is_finite())) {
            return f64::NAN;
        }
        let lambda2 = self.params.damping * self.params.damping;
        for _ in 0..self.params.iterations {
            self.jacobian(&q[..n], &mut jacobian);
            let mut jjt = Matrix3::identity() * lambda2;
            for column in &jacobian[..n] {
                jjt += column * column.transpose();
            }
            // J Jᵀ + λ² I is symmetric positive definite for λ > 0.
            let Some(y) = jjt.cholesky().map(|c| c.solve(&error)) else {
                break;
            };
            let mut step = [0.0; MAX_JOINTS];
            let mut largest: f64 = 0.0;
            for (s, column) in step.iter_mut().zip(&jacobian[..n]) {
                *s = column.dot(&y);
                largest = largest.max(s.abs());
            }
            let scale = if largest > self.params.max_step {
                self.params.max_step / largest
            } else {
                1.0
            };
            for (j, value) in q[..n].iter_mut().enumerate() {
                let [lo, hi] = limits.get(j).copied().unwrap_or([f64::MIN, f64::MAX]);
                *value = (*value + step[j] * scale).clamp(lo, hi);
            }
            error = goal - self.position(&q[..n]);
        }
        error.norm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robot_model::RobotModel;
    use rand::{Rng, SeedableRng};

    const LINKS: [f64; 3] = [0.4, 0.3, 0.2];

    fn sim_arm() -> (std::sync::Arc<KinematicChain>, LinkId) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../launch/sim_arm.urdf");
        let model = RobotModel::from_file(&path, None).unwrap();
        (std::sync::Arc::new(model.chain), model.tip)
    }

    /// The planar 3-link arm's tip, written from its geometry (not from the chain).
    fn planar_tip(q: &[f64]) -> (f64, f64) {
        let (mut x, mut y, mut angle) = (0.0, 0.0, 0.0);
        for (length, value) in LINKS.iter().zip(q) {
            angle += value;
            x += length * angle.cos();
            y += length * angle.sin();
        }
        (x, y)
    }

    #[test]
    fn the_jacobian_matches_the_planar_arms_analytic_one() {
        let (chain, tip) = sim_arm();
        let ik = DampedLeastSquares::new(chain, tip, DlsParams::default());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut jacobian = [Vector3::zeros(); MAX_JOINTS];
        for _ in 0..50 {
            let q: Vec<f64> = (0..3).map(|_| rng.random_range(-2.0..2.0)).collect();
            ik.jacobian(&q, &mut jacobian);
            // Column j: the tip's velocity when joint j turns, ω ẑ x (tip - joint j).
            for j in 0..3 {
                let (tx, ty) = planar_tip(&q);
                let (jx, jy) = planar_tip(&q[..j]);
                let (ex, ey) = (-(ty - jy), tx - jx);
                let column = jacobian[j];
                let p = ik.position(&q);
                assert!(
                    (p.x - tx).abs() < 1e-9 && (p.y - ty).abs() < 1e-9,
                    "{p} vs {tx},{ty}"
                );
                assert!(
                    (column.x - ex).abs() < 1e-6 && (column.y - ey).abs() < 1e-6,
                    "q {q:?} joint {j}: {column} vs ({ex}, {ey})"
                );
            }
        }
    }

    #[test]
    fn reachable_goals_are_reached_and_unreachable_ones_stay_bounded() {
        let (chain, tip) = sim_arm();
        let ik = DampedLeastSquares::new(chain, tip, DlsParams::default());
        let limits = [[-2.8, 2.8]; 3];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..200 {
            let start: Vec<f64> = (0..3).map(|_| rng.random_range(-1.5..1.5)).collect();
            // A goal 5 cm away in a random direction from a reachable pose.
            let mut nearby = start.clone();
            for v in &mut nearby {
                *v += rng.random_range(-0.15..0.15);
            }
            let goal = ik.position(&nearby);
            let mut q = start.clone();
            let mut remaining = f64::INFINITY;
            for _ in 0..20 {
                remaining = ik.solve(&mut q, &goal, &limits);
            }
            assert!(
                remaining < 1e-4,
                "from {start:?} to {goal}: {remaining} m left"
            );
        }
        // Out of reach (the arm is 0.9 m long): the tip stretches toward the goal,
        // every step bounded, nothing blows up.
        let goal = Vector3::new(2.0, 0.0, 0.0);
        let mut q = vec![0.3, 0.4, 0.5];
        for _ in 0..200 {
            let before = q.clone();
            let remaining = ik.solve(&mut q, &goal, &limits);
            assert!(remaining.is_finite());
            for (a, b) in q.iter().zip(&before) {
                assert!((a - b).abs() <= 4.0 * 0.05 + 1e-12);
            }
        }
        assert!(
            (ik.position(&q).x - 0.9).abs() < 1e-3,
            "{}",
            ik.position(&q)
        );
        // A NaN goal changes nothing.
        let mut same = q.clone();
        assert!(
            ik.solve(&mut same, &Vector3::new(f64::NAN, 0.0, 0.0), &limits)
                .is_nan()
        );
        assert_eq!(same, q);
    }

    #[test]
    fn joint_limits_hold() {
        let (chain, tip) = sim_arm();
        let ik = DampedLeastSquares::new(chain, tip, DlsParams::default());
        let limits = [[-0.5, 0.5], [0.0, 1.0], [0.0, 1.0]];
        let mut q = vec![0.0, 0.5, 0.5];
        // A goal behind the arm needs the shoulder far past 0.5 rad.
        let goal = Vector3::new(-0.3, 0.3, 0.0);
        for _ in 0..100 {
            ik.solve(&mut q, &goal, &limits);
            for (v, [lo, hi]) in q.iter().zip(limits) {
                assert!((lo..=hi).contains(v), "{q:?}");
            }
        }
    }
}
