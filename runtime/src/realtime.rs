//! Optional real-time settings for the control thread. Each one that the OS refuses
//! (no CAP_SYS_NICE, a CPU that does not exist) is reported and the run continues.

use crate::launch::RealtimeConfig;

/// Applies `config` to the calling thread; returns a warning per setting refused.
pub fn apply(config: &RealtimeConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.lock_memory {
        // SAFETY: mlockall takes flags only.
        if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
            warnings.push(format!(
                "mlockall failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if !config.cpus.is_empty() {
        // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against its size.
        let result = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in &config.cpus {
                if cpu < libc::CPU_SETSIZE as usize {
                    libc::CPU_SET(cpu, &mut set);
                }
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if result != 0 {
            warnings.push(format!(
                "pinning to CPUs {:?} failed: {}",
                config.cpus,
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some(priority) = config.fifo_priority {
        let param = libc::sched_param {
            sched_priority: i32::from(priority),
        };
        // SAFETY: param outlives the call.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            warnings.push(format!(
                "SCHED_FIFO priority {priority} refused ({}); running with normal scheduling \
                 (grant CAP_SYS_NICE or an rtprio limit to enable it)",
                std::io::Error::last_os_error()
            ));
        }
    }
    warnings
}

/// Lowers the calling thread to the least CPU priority (nice 19), for background
/// work that must not take the cores from the tick (loading a model pushed at run
/// time, say). Linux applies it to this thread only.
pub fn background_thread() -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions; setpriority takes a thread id for PRIO_PROCESS.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_settings_warn_instead_of_failing() {
        let config = RealtimeConfig {
            fifo_priority: None,
            cpus: vec![100_000],
            lock_memory: false,
        };
        let warnings = apply(&config);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("pinning"));
    }
}
