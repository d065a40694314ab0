//! GLUE metrics, implemented once: accuracy, binary F1, Matthews correlation, Pearson and
//! Spearman (average ranks for ties).

/// Share of `pred[i] == gold[i]`.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    assert_eq!(pred.len(), gold.len());
    if gold.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

/// Counts of a binary confusion table with class 1 as positive: (tp, fp, fn, tn).
fn confusion(pred: &[usize], gold: &[usize]) -> (f64, f64, f64, f64) {
    assert_eq!(pred.len(), gold.len());
    let (mut tp, mut fp, mut fn_, mut tn) = (0.0, 0.0, 0.0, 0.0);
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            (false, false) => tn += 1.0,
        }
    }
    (tp, fp, fn_, tn)
}

/// F1 of the positive class (label 1); 0 when there are no true positives.
pub fn f1(pred: &[usize], gold: &[usize]) -> f64 {
    let (tp, fp, fn_, _) = confusion(pred, gold);
    if tp == 0.0 {
        return 0.0;
    }
    2.0 * tp / (2.0 * tp + fp + fn_)
}

/// Matthews correlation coefficient of a binary task; 0 when a marginal is empty (sklearn's
/// convention).
pub fn matthews(pred: &[usize], gold: &[usize]) -> f64 {
    let (tp, fp, fn_, tn) = confusion(pred, gold);
    let denom = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if denom == 0.0 {
        return 0.0;
    }
    (tp * tn - fp * fn_) / denom
}

/// Pearson correlation; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    let n = x.len() as f64;
    if x.is_empty() {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    sxy / (sxx * syy).sqrt()
}

/// 1-based ranks, tied values sharing the average of their ranks.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = avg;
        }
        i = j + 1;
    }
    out
}

/// Spearman rank correlation (Pearson of average ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matthews_on_a_hand_computed_two_by_two_table() {
        // tp=3, fp=1, fn=2, tn=4: (12-2)/sqrt(4*5*5*6) = 10/sqrt(600).
        let gold = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
        let pred = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0];
        assert!((matthews(&pred, &gold) - 10.0 / 600f64.sqrt()).abs() < 1e-12);
        assert_eq!(matthews(&[1, 1, 1], &[1, 0, 1]), 0.0, "constant prediction");
        assert!((matthews(&gold, &gold) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn f1_and_accuracy_by_hand() {
        let gold = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
        let pred = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0];
        // precision 3/4, recall 3/5 -> F1 = 2*0.75*0.6/1.35 = 2/3.
        assert!((f1(&pred, &gold) - 2.0 / 3.0).abs() < 1e-12);
        assert!((accuracy(&pred, &gold) - 0.7).abs() < 1e-12);
        assert_eq!(f1(&[0, 0], &[1, 0]), 0.0);
    }

    #[test]
    fn pearson_by_hand() {
        // x = 1..5, y = 2,4,5,4,5: sxy = 6, sxx = 10, syy = 6 -> 6/sqrt(60).
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 4.0, 5.0, 4.0, 5.0];
        assert!((pearson(&x, &y) - 6.0 / 60f64.sqrt()).abs() < 1e-12);
        assert_eq!(pearson(&x, &[1.0; 5]), 0.0);
    }

    #[test]
    fn spearman_with_ties_uses_average_ranks() {
        assert_eq!(ranks(&[10.0, 20.0, 20.0, 5.0]), vec![2.0, 3.5, 3.5, 1.0]);
        // y ranks: 1, 2.5, 2.5, 4, 5 (scipy.stats.spearmanr gives 0.9746794344808963).
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [1.0, 2.0, 2.0, 3.0, 4.0];
        assert!((spearman(&x, &y) - 0.974_679_434_480_896_3).abs() < 1e-12);
        // Monotone but non-linear: Spearman 1, Pearson below 1.
        let z = [1.0, 8.0, 27.0, 64.0, 125.0];
        assert!((spearman(&x, &z) - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &z) < 0.99);
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!((m - 5.0).abs() < 1e-12);
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[3.0]), (3.0, 0.0));
    }
}
