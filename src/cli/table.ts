import { stripVTControlCharacters } from 'node:util';

/** A plain left-aligned table, two spaces between columns; the last column is not padded. Colour codes take no width. */
export function renderTable(rows: string[][]): string {
  const width = (cell: string) => stripVTControlCharacters(cell).length;
  const widths = rows[0]?.map((_, column) => Math.max(...rows.map((row) => width(row[column] ?? '')))) ?? [];
  return rows
    .map((row) =>
      row
        .map((cell, column) => (column === row.length - 1 ? cell : cell + ' '.repeat(Math.max(0, (widths[column] ?? 0) - width(cell)))))
        .join('  '),
    )
    .join('\n');
}
