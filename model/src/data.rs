//! Frames to tensors and back: the bridge between the world (RGB8) and the models.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

/// Stacks clips of RGB8 frames into a video tensor with values in [-1, 1].
///
/// # Shapes
/// - `clips`: `b` clips of `t` frames of `height × width × 3` bytes
/// - returns: `[b, 3, t, height, width]`
pub fn video_tensor<B: Backend>(
    clips: &[Vec<Vec<u8>>],
    width: usize,
    height: usize,
    device: &B::Device,
) -> Tensor<B, 5> {
    let b = clips.len();
    let t = clips.first().map_or(0, |c| c.len());
    let plane = width * height;
    for clip in clips {
        assert_eq!(clip.len(), t, "every clip of a batch has the same number of frames");
        assert!(clip.iter().all(|frame| frame.len() == plane * 3), "frame buffer size");
    }
    // One channel of one clip per task: a training batch at 256² is 200 MB of f32, which one
    // thread fills (and faults in) slower than a GPU step takes.
    let mut values = vec![0f32; b * 3 * t * plane];
    if plane > 0 && t > 0 {
        values.par_chunks_mut(t * plane).enumerate().for_each(|(k, channel)| {
            let (clip, c) = (&clips[k / 3], k % 3); // [b, c, t, h*w]
            for (frame, out) in clip.iter().zip(channel.chunks_exact_mut(plane)) {
                for (v, px) in out.iter_mut().zip(frame.chunks_exact(3)) {
                    *v = px[c] as f32 / 127.5 - 1.0;
                }
            }
        });
    }
    Tensor::from_data(TensorData::new(values, [b, 3, t, height, width]), device)
}

/// The inverse of [`video_tensor`]: RGB8 frames of every clip, values clamped to [-1, 1].
///
/// # Shapes
/// - `video`: `[b, 3, t, height, width]`
pub fn video_frames<B: Backend>(video: Tensor<B, 5>) -> Vec<Vec<Vec<u8>>> {
    let [b, c, t, height, width] = video.dims();
    assert_eq!(c, 3, "RGB video");
    let values: Vec<f32> = video.into_data().convert::<f32>().into_vec().expect("f32 data after convert");
    let plane = width * height;
    (0..b)
        .map(|ci| {
            (0..t)
                .map(|fi| {
                    let mut frame = vec![0u8; plane * 3];
                    for c in 0..3 {
                        let base = ((ci * 3 + c) * t + fi) * plane;
                        for p in 0..plane {
                            let v = (values[base + p].clamp(-1.0, 1.0) + 1.0) * 127.5;
                            frame[p * 3 + c] = v.round() as u8;
                        }
                    }
                    frame
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{ClipOptions, ClipSampler, Split};
    use burn::backend::Flex;

    #[test]
    fn world_clips_round_trip_through_tensors() {
        let o = ClipOptions { width: 32, height: 24, fps: 8.0, frames: 5, transition_probability: 0.0 };
        let mut sampler = ClipSampler::new(Split::Train, 1);
        let clips: Vec<Vec<Vec<u8>>> = (0..2).map(|_| sampler.next_clip(&o).render(false)).collect();
        let device = Default::default();
        let x = video_tensor::<Flex>(&clips, 32, 24, &device);
        assert_eq!(x.dims(), [2, 3, 5, 24, 32]);
        let (lo, hi) = (x.clone().min().into_scalar(), x.clone().max().into_scalar());
        assert!((-1.0..=1.0).contains(&lo) && (-1.0..=1.0).contains(&hi) && lo < hi);
        assert_eq!(video_frames(x), clips);
    }
}
